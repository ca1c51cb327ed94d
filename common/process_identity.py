"""A process named so that a reused pid is never mistaken for it: pid and start time.

Records that outlive their writer (a sender's paused guests, a receiver's unfinished
sessions) name their owner this way; "is the owner still alive" is then a question a
recycled pid cannot answer wrongly.
"""

from __future__ import annotations

import os
from pathlib import Path


def process_start(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat);
    0 when it does not exist."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def alive(pid: int, start: int) -> bool:
    return pid > 0 and start > 0 and process_start(pid) == start


def this_process() -> tuple[int, int]:
    pid = os.getpid()
    return pid, process_start(pid)
