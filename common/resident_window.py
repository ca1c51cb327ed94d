"""A window of a guest memory file mapped read-only, used only while every page of it is in memory.

A connection process reads guest memory to scan it and to frame what it sends.
With pread(2) every page is copied once into the process, zero or not, and the
pages of a chunk that turn out to hold data are copied a second time into the
frame that leaves without the zero pages. Through a shared mapping the scan
reads the page cache in place and only the data pages are copied, once, into
the frame: at 50 % of pages written this took 0.12 CPU s per GiB off a sender
of 0.82 and 8 % off the migration's time (docs/benchmarks.md, issue 25). A chunk
without zero pages costs one copy either way, and through a mapping its page
tables on top (mincore, populate, munmap: 0.5-0.8 ms per 8 MiB), so the sender
reads such chunks with pread (sender/batch_builder.py, stop 17). QEMU reads guest
memory the same way: it is its own mapping.

A mapping must never touch a page that is not already in memory. Reading a hole
of a shared tmpfs or hugetlbfs mapping allocates a page in the guest's file (a
sparse guest would grow on the source, pread(2) reads holes as zeros without
that); a page beyond the end of a file that shrank raises SIGBUS. So the window
is offered only when mincore(2) says every page of it is resident (tmpfs: in
memory and not swapped out), and Python's mmap refuses a window past the end of
the file; otherwise the caller reads with pread as before. A page that becomes a
hole, or a file that shrinks, between that check and the read is the one case
left: the first allocates a zero page in the guest's file (its bytes read the
same), the second ends the connection process with SIGBUS, which its pool treats
as a broken connection (the restarted process finds the range outside the
shorter file and fails the migration, as pread's short read would have).

On hugetlbfs mincore(2) answers for the mapping's own page tables, not for the
file, so a fresh window there never qualifies: hugetlbfs guests are read with
pread (tests/test_resident_window.py checks both that and that no huge page is
taken from the pool).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import mmap
from collections.abc import Callable

import numpy as np

_PAGE = mmap.PAGESIZE
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; the constant is in Python 3.13


@functools.cache
def _mincore() -> Callable[[int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).mincore
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    function.restype = ctypes.c_int
    return function


def all_resident(address: int, length: int) -> bool:
    """Whether every page of [address, address + length) (page-aligned address) is in memory."""
    mincore = _mincore()
    if mincore is None:
        return False
    pages = -(-length // _PAGE)
    flags = np.empty(pages, dtype=np.uint8)
    if mincore(address, length, flags.ctypes.data) != 0:
        return False
    return bool((flags & 1).all())


class ResidentWindow:
    """[offset, offset + length) of an open file, mapped read-only; `view` is its bytes.

    open() returns None where the window cannot be mapped (a file system without
    mmap, an offset hugetlbfs cannot map at) or any page of it is not in memory.
    close() after every view of `view` is released.
    """

    __slots__ = ("_mapping", "view")

    def __init__(self, mapping: mmap.mmap, skip: int, length: int) -> None:
        self._mapping = mapping
        self.view = memoryview(mapping)[skip : skip + length]

    @classmethod
    def open(cls, fd: int, offset: int, length: int) -> ResidentWindow | None:
        if length <= 0:
            return None
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(fd, offset + length - start, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=start)
        except (OSError, ValueError):
            return None
        pages = np.frombuffer(mapping, dtype=np.uint8)  # only for its address: no page is read
        address = pages.ctypes.data
        del pages
        if not all_resident(address, len(mapping)):
            mapping.close()
            return None
        with contextlib.suppress(OSError):  # page tables filled in one call, not a fault per 16 pages
            mapping.madvise(MADV_POPULATE_READ)
        return cls(mapping, offset - start, length)

    def close(self) -> None:
        """Unmap now; where a view of it is still held (an error left one behind), the
        mapping goes with the last view instead."""
        with contextlib.suppress(BufferError):
            self.view.release()
            self._mapping.close()
