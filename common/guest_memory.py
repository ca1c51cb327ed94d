"""Guest memory as files at guest-physical addresses (tmpfs, hugetlbfs or plain files).

The sender opens the guest's files read-only; the receiver creates its own
destination files. Both resolve guest-physical ranges to (file, offset) through
the same `MemoryLayout`, so a range that leaves the layout is caught in one place.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from livemig.common.ranges import U64_MAX, MemoryRange, RangeTable, find_overlap
from livemig.common.resident_window import ResidentWindow

READ_BLOCK = 8 << 20


class LayoutError(ValueError):
    """A region set that cannot describe guest memory (overlap, misalignment, ...)."""


@dataclass(slots=True)
class RegionFile:
    """One guest memory region backed by an open file descriptor."""

    gpa: int
    length: int
    path: str
    fd: int = field(default=-1)

    @property
    def range(self) -> MemoryRange:
        return MemoryRange(self.gpa, self.length)


class MemoryLayout:
    """Regions sorted by gpa, with lookups from a guest range to its file and offset."""

    def __init__(self, regions: Sequence[RegionFile], page_size: int) -> None:
        ordered = sorted(regions, key=lambda r: r.gpa)
        check_layout([r.range for r in ordered], page_size)
        self.regions: list[RegionFile] = ordered
        self.page_size = page_size
        self._starts = [r.gpa for r in ordered]

    @property
    def table(self) -> RangeTable:
        return RangeTable(tuple(r.range for r in self.regions))

    @property
    def total_bytes(self) -> int:
        return sum(r.length for r in self.regions)

    def locate(self, gpa: int, length: int) -> tuple[RegionFile, int] | None:
        """The region wholly containing [gpa, gpa+length) and the file offset, or None."""
        index = bisect.bisect_right(self._starts, gpa) - 1
        if index < 0 or length < 0:
            return None
        region = self.regions[index]
        offset = gpa - region.gpa
        if offset + length > region.length:
            return None
        return region, offset

    def split_at_regions(self, ranges: Iterable[MemoryRange]) -> list[MemoryRange]:
        """Cut ranges where one region ends and the next begins (adjacent regions merge
        into one range in a RangeTable, but each region is its own file)."""
        pieces: list[MemoryRange] = []
        for memory_range in ranges:
            start = memory_range.gpa
            while start < memory_range.end:
                located = self.locate(start, 1)
                if located is None:
                    raise LayoutError(f"gpa {start:#x} is outside guest memory")
                region, _offset = located
                end = min(memory_range.end, region.gpa + region.length)
                pieces.append(MemoryRange(start, end - start))
                start = end
        return pieces

    def region_starts(self) -> np.ndarray:
        return np.array([r.gpa for r in self.regions], dtype=np.uint64)

    def data_start(self, gpa: int, length: int) -> int:
        """First gpa in [gpa, gpa+length) where the backing file may hold data.

        Returns gpa+length when the whole span is a hole. Holes in a sparse file
        (guest memory never touched, on tmpfs, hugetlbfs or disk) read as zero, so
        a zero-page scan skips them unread. Only SEEK_DATA is used: it answers at
        once when data starts at the offset, while SEEK_HOLE walks to the end of
        a fully allocated file on every call. Filesystems without hole tracking
        report everything as data.
        """
        located = self.locate(gpa, length)
        if located is None:
            raise LayoutError(f"range at gpa {gpa:#x} (+{length}) is outside guest memory")
        region, offset = located
        try:
            data_offset = os.lseek(region.fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only a hole from here to the end of the file
                return gpa + length
            raise
        return min(region.gpa + data_offset, gpa + length)

    def read_into(self, gpa: int, buffer: memoryview) -> None:
        """Fill buffer with guest memory starting at gpa (must lie inside one region)."""
        located = self.locate(gpa, len(buffer))
        if located is None:
            raise LayoutError(f"range at gpa {gpa:#x} (+{len(buffer)}) is outside guest memory")
        region, offset = located
        done = 0
        while done < len(buffer):
            got = os.preadv(region.fd, [buffer[done:]], offset + done)
            if got <= 0:
                raise OSError(f"short read from {region.path} at offset {offset + done}")
            done += got

    def resident_window(self, gpa: int, length: int) -> ResidentWindow | None:
        """[gpa, gpa+length) mapped in place when every page of it is in memory, else None
        (read it with read_into then): see common/resident_window.py."""
        located = self.locate(gpa, length)
        if located is None:
            raise LayoutError(f"range at gpa {gpa:#x} (+{length}) is outside guest memory")
        region, offset = located
        return ResidentWindow.open(region.fd, offset, length)

    def iter_blocks(self, block_size: int = READ_BLOCK) -> Iterator[memoryview]:
        """All guest memory in gpa order, block by block (for digests)."""
        buffer = memoryview(bytearray(block_size))
        for region in self.regions:
            for start in range(0, region.length, block_size):
                piece = buffer[: min(block_size, region.length - start)]
                self.read_into(region.gpa + start, piece)
                yield piece

    def close(self) -> None:
        for region in self.regions:
            if region.fd >= 0:
                os.close(region.fd)
                region.fd = -1


def check_layout(ranges: Sequence[MemoryRange], page_size: int) -> None:
    """Reject layouts no guest can have; the messages go to API clients verbatim."""
    if not ranges:
        raise LayoutError("no guest memory regions given")
    for memory_range in ranges:
        if memory_range.length <= 0:
            raise LayoutError(f"region at gpa {memory_range.gpa:#x} is empty")
        if memory_range.gpa % page_size:
            raise LayoutError(f"region gpa {memory_range.gpa:#x} is not aligned to the page size {page_size}")
        if memory_range.length % page_size:
            raise LayoutError(
                f"region at gpa {memory_range.gpa:#x} has size {memory_range.length}, "
                f"not a multiple of the page size {page_size}"
            )
        if memory_range.end > U64_MAX:
            # Ends are kept as uint64 (the receiver's range checks): 2**64 itself does not fit.
            raise LayoutError(f"region at gpa {memory_range.gpa:#x} ends at or beyond 2**64 (the address space)")
    overlap = find_overlap(ranges)
    if overlap is not None:
        first, second = overlap
        raise LayoutError(f"regions overlap: [{first.gpa:#x}, {first.end:#x}) and [{second.gpa:#x}, {second.end:#x})")


def open_regular_file(path: str, flags: int = os.O_RDONLY) -> int:
    """Open a regular file (tmpfs, hugetlbfs and disk files are) without ever blocking.

    A FIFO or device named by a client must not hang or disturb the sender: the type is
    checked with stat before the open, the open is non-blocking, and the descriptor is
    checked again with fstat (the name may have been swapped in between). Raises
    FileNotFoundError, PermissionError or LayoutError (not a regular file).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise LayoutError(f"{path} is not a regular file")
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LayoutError(f"{path} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_source_layout(
    regions: Sequence[tuple[int, str]], page_size: int, admit: Callable[[int, str], None] | None = None
) -> MemoryLayout:
    """Open the guest's memory files read-only, each checked by `admit(fd, path)` (the
    sender's confinement) before it is used. Raises FileNotFoundError or LayoutError;
    nothing stays open when it raises."""
    files: list[RegionFile] = []
    try:
        for gpa, path in regions:
            if not path:
                raise LayoutError(f"region at gpa {gpa:#x} has no path")
            fd = open_regular_file(path)
            files.append(RegionFile(gpa=gpa, length=os.fstat(fd).st_size, path=path, fd=fd))
            if admit is not None:
                admit(fd, path)
        return MemoryLayout(files, page_size)
    except BaseException:
        for region in files:
            os.close(region.fd)
        raise
