"""How a session's destination memory is written: pwrite(2) or stores through a shared mapping.

pwrite costs the least CPU, but on tmpfs a write holds the file's inode lock for
the whole copy and page allocation, so the workers of one session write one at a
time (receiver/write_turns.py). Stores through a shared mapping fault pages in
under the page lock only, so workers write in parallel; the kernel clears each
new page before the copy, which is why pwrite stays the choice where few workers
write at once. The control process picks the mode per session (session_write_mode)
and records it in the SessionRecord; every data worker follows it.
"""

from __future__ import annotations

import errno
import mmap
import os

MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; the constant is in Python 3.13


class WriteMode:
    """How data workers write destination memory (see the module docstring)."""

    AUTO = "auto"
    PWRITE = "pwrite"
    MAPPED = "mapped"  # (cli/main.py lists the three for --write-mode)
    # From this many writers at once (data workers a session's streams land on), stores
    # through a mapping outrun pwrite writers taking turns (benchmarks/dest_writes.py).
    MAPPED_FROM_WORKERS = 3


def mapped_writes_supported() -> bool:
    """Can this kernel populate a shared mapping (MADV_POPULATE_WRITE)? Without it a
    full tmpfs would kill a worker with SIGBUS instead of failing one batch."""
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as probe:
            probe.madvise(MADV_POPULATE_WRITE, 0, mmap.PAGESIZE)
    except (OSError, ValueError):
        return False
    return True


def usable_write_mode(preferred: str) -> str:
    """--write-mode as this kernel allows it (checked once, at start): auto without
    MADV_POPULATE_WRITE is pwrite; mapped without it is an error."""
    if preferred == WriteMode.PWRITE or mapped_writes_supported():
        return preferred
    if preferred == WriteMode.MAPPED:
        raise RuntimeError("mapped writes need madvise(MADV_POPULATE_WRITE), Linux 5.14 or later")
    return WriteMode.PWRITE


def session_write_mode(mode: str, data_workers: int, connections: int) -> str:
    """One session's write mode. Its streams spread over the data workers, so
    min(workers, connections) of them write at once; from MAPPED_FROM_WORKERS
    writers on, parallel stores beat one pwrite writer at a time. A sender that
    does not say its connections (0) is taken to use every worker."""
    if mode != WriteMode.AUTO:
        return mode
    writers = min(data_workers, connections) if connections else data_workers
    return WriteMode.MAPPED if writers >= WriteMode.MAPPED_FROM_WORKERS else WriteMode.PWRITE


def file_write_mode(preferred: str, fd: int) -> str:
    """`preferred`, unless the file takes no write(2) at all (hugetlbfs): then mapped."""
    if preferred == WriteMode.PWRITE:
        try:
            os.pwrite(fd, b"", 0)
        except OSError as error:
            if error.errno == errno.EINVAL and mapped_writes_supported():
                return WriteMode.MAPPED
            raise
    return preferred
