"""Destination files that a receiver crash left unfinished, found and removed at start.

A receiver keeps a completed session's files (the new VM runs on them) and removes a
failed, aborted or expired one's. A receiver that dies (SIGKILL, OOM, power) removes
nothing: the half-written memory of its unfinished sessions would stay in
--memory-dir for good, taking space the next migrations need. So each session
directory carries a marker while it is unfinished, naming its receiver by pid and
start time; completion removes it. The marker is an empty folder whose name holds
the owner: a hugetlbfs memory dir takes folders but no small files. A receiver that starts removes every session
directory whose marker names a receiver that is gone, and logs what it removed;
directories of receivers still running (several may share a memory dir) stay.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from livemig.common.human import format_bytes
from livemig.common.process_identity import alive, this_process

log = logging.getLogger("livemig.receiver")

MARKER = ".livemig-unfinished"
_OWNER = re.compile(re.escape(MARKER) + r"-(\d+)-(\d+)")


def mark_unfinished(directory: Path) -> None:
    pid, start = this_process()
    (directory / f"{MARKER}-{pid}-{start}").mkdir()


def mark_finished(directory: Path) -> None:
    for marker in directory.glob(f"{MARKER}-*"):
        marker.rmdir()


def _allocated(directory: Path) -> int:
    return sum(entry.stat().st_blocks * 512 for entry in directory.iterdir() if entry.is_file())


def remove_orphans(memory_dir: Path) -> list[tuple[str, int]]:
    """Remove the unfinished sessions of receivers that are gone; (session, bytes) removed."""
    removed = []
    for marker in sorted(memory_dir.glob(f"*/{MARKER}-*")):
        directory = marker.parent
        owner = _OWNER.fullmatch(marker.name)
        if owner is not None and alive(int(owner[1]), int(owner[2])):
            continue  # a running receiver's session (an unreadable name is a crash's too)
        if not directory.exists():
            continue  # a second marker of a folder already removed
        size = _allocated(directory)
        shutil.rmtree(directory, ignore_errors=True)
        log.warning(
            "removed the unfinished destination of session %s (%s) that a receiver which died left in %s",
            directory.name,
            format_bytes(size),
            memory_dir,
        )
        removed.append((directory.name, size))
    return removed


def allocated_bytes(memory_dir: Path) -> int:
    """What every session's destination files occupy, finished or not (the dashboard's figure)."""
    total = 0
    try:
        for directory in memory_dir.iterdir():
            if directory.is_dir():
                total += _allocated(directory)
    except OSError:
        pass
    return total


__all__ = ["MARKER", "allocated_bytes", "mark_finished", "mark_unfinished", "remove_orphans"]
