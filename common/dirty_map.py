"""The dirty-page map a guest writer shares with the sender (format: docs/dirty-log.md).

One byte per guest page of a region, in a file of exactly pages bytes. The writer
sets a page's byte to non-zero before it writes the page and again after; the
sender, each iteration, clears the bytes it found set and only then reads those
pages. A write that lands after the clear sets the byte again, so it is sent in a
later iteration; none is lost between two iterations.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
from pathlib import Path

import numpy as np

DIRTY = 1

# Acquiring and releasing a lock executes a locked instruction: a full memory
# barrier, so the clearing stores are globally visible before page contents are
# read (x86 may otherwise let the later loads pass the earlier stores).
_FENCE = threading.Lock()


def memory_fence() -> None:
    with _FENCE:
        pass


class DirtyMap:
    """A region's dirty map, mapped shared so both sides see each other's stores."""

    def __init__(self, path: Path | str, pages: int, create: bool = False) -> None:
        # An existing map is opened as the sender does: never through a symlink, never
        # blocking, and only if it is a regular file (it is mapped read-write and cleared).
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        if not create and not stat.S_ISREG(os.lstat(path).st_mode):
            raise ValueError(f"dirty map {path} is not a regular file")  # a device is never opened
        fd = os.open(path, flags, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"dirty map {path} is not a regular file")
            if create:
                os.ftruncate(fd, pages)
            status = os.fstat(fd)
            size = status.st_size
            if size != pages:
                raise ValueError(f"dirty map {path} has {size} entries, the region has {pages} pages")
            self._mmap = mmap.mmap(fd, pages) if pages else None
        finally:
            os.close(fd)
        self.path = str(path)
        self.identity = (status.st_dev, status.st_ino)  # the file, whatever path names it
        self.pages = pages
        self.flags = np.frombuffer(self._mmap, dtype=np.uint8) if self._mmap else np.zeros(0, np.uint8)

    def mark(self, first_page: int, count: int = 1) -> None:
        """Writer side: call before writing the pages and again after."""
        self.flags[first_page : first_page + count] = DIRTY

    def count(self) -> int:
        """Pages dirty now, without clearing (for estimates)."""
        return int(np.count_nonzero(self.flags))

    def collect(self) -> np.ndarray:
        """Sender side: indices of dirty pages, cleared before this returns (fence included)."""
        # Snapshot first: the writer keeps storing into the shared map meanwhile, and
        # numpy's nonzero over memory that changes under it fails.
        dirty = np.flatnonzero(self.flags.copy())
        self.flags[dirty] = 0
        memory_fence()
        return dirty

    def clear(self) -> None:
        self.flags[:] = 0
        memory_fence()

    def close(self) -> None:
        if self._mmap is not None:
            self.flags = np.zeros(0, np.uint8)
            self._mmap.close()
            self._mmap = None
