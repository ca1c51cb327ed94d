"""Guest-physical range arithmetic, after Cloud Hypervisor's vm-migration crate.

Ranges are half-open byte spans [gpa, gpa + length). A `RangeTable` is kept
sorted, disjoint and merged, so two tables describing the same bytes compare equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_PAGE_SIZE = 4096
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 1 << 30
U64_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True, order=True)
class MemoryRange:
    gpa: int
    length: int

    @property
    def end(self) -> int:
        return self.gpa + self.length

    def contains(self, other: MemoryRange) -> bool:
        return self.gpa <= other.gpa and other.end <= self.end


def ranges_to_array(ranges: Iterable[MemoryRange]) -> np.ndarray:
    """Ranges as a k x 2 uint64 array (gpa, length): how pipes and the wire carry them."""
    return np.array([(r.gpa, r.length) for r in ranges], dtype=np.uint64).reshape(-1, 2)


def ranges_from_array(array: np.ndarray) -> list[MemoryRange]:
    """The inverse of ranges_to_array."""
    return [MemoryRange(gpa, length) for gpa, length in array.tolist()]


def effective_page_size(page_size: int) -> int:
    """Apply the API default (0 means 4096) and reject sizes a guest cannot have."""
    size = page_size or DEFAULT_PAGE_SIZE
    if size < MIN_PAGE_SIZE or size > MAX_PAGE_SIZE or size & (size - 1):
        raise ValueError(f"page size {size} is not a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}")
    return size


def align_down(value: int, alignment: int) -> int:
    return value - value % alignment


def merge_ranges(ranges: Iterable[MemoryRange]) -> list[MemoryRange]:
    """Sort, drop empty ranges and merge overlapping or touching ones."""
    merged: list[MemoryRange] = []
    for current in sorted(r for r in ranges if r.length > 0):
        if merged and current.gpa <= merged[-1].end:
            last = merged[-1]
            merged[-1] = MemoryRange(last.gpa, max(last.end, current.end) - last.gpa)
        else:
            merged.append(current)
    return merged


def find_overlap(ranges: Iterable[MemoryRange]) -> tuple[MemoryRange, MemoryRange] | None:
    """Return the first pair of overlapping ranges (by gpa), or None if all are disjoint."""
    ordered = sorted(r for r in ranges if r.length > 0)
    for before, after in itertools.pairwise(ordered):
        if after.gpa < before.end:
            return before, after
    return None


@dataclass(frozen=True, slots=True)
class RangeTable:
    """A sorted, disjoint, merged set of ranges (Cloud Hypervisor's MemoryRangeTable)."""

    ranges: tuple[MemoryRange, ...]

    @classmethod
    def of(cls, ranges: Iterable[MemoryRange]) -> RangeTable:
        return cls(tuple(merge_ranges(ranges)))

    @property
    def total_bytes(self) -> int:
        return sum(r.length for r in self.ranges)

    def __iter__(self) -> Iterator[MemoryRange]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def partition(self, chunk_size: int) -> Iterator[RangeTable]:
        """Cut the table into chunks of at most chunk_size bytes, in gpa order.

        As Cloud Hypervisor's MemoryRangeTable::partition: a chunk gathers whole
        ranges while they fit, and a range larger than what is left of a chunk is
        split at multiples of chunk_size counted from the range's start (so with a
        page-multiple chunk_size and page-aligned ranges every piece is page
        aligned). Scattered dirty pages thus travel many to a batch.
        """
        if chunk_size <= 0:
            raise ValueError("chunk size must be positive")
        cursor = RangeCursor(self.ranges)
        while cursor:
            yield RangeTable(cursor.take(chunk_size))


class RangeCursor:
    """Sorted, disjoint ranges handed out front to back in pieces of a size chosen per
    piece: `partition` with a chunk size that may change from one chunk to the next
    (the sender sizes each chunk by how dense the memory before it was).

    take(size) gathers whole ranges while they fit and ends the piece before a range
    that does not, unless the piece is still empty: then that range gives its first
    `size` bytes. With page-multiple sizes and page-aligned ranges every piece is
    page aligned.
    """

    __slots__ = ("_index", "_offset", "_ranges", "_remaining")

    def __init__(self, ranges: Iterable[MemoryRange]) -> None:
        self._ranges = tuple(r for r in ranges if r.length > 0)
        self._index = 0
        self._offset = 0  # bytes of self._ranges[self._index] already handed out
        self._remaining = sum(r.length for r in self._ranges)

    def __bool__(self) -> bool:
        return self._index < len(self._ranges)

    @property
    def remaining_bytes(self) -> int:
        return self._remaining

    def take(self, size: int) -> tuple[MemoryRange, ...]:
        """The next piece, of at most `size` bytes (empty once everything was taken)."""
        if size <= 0:
            raise ValueError("piece size must be positive")
        piece: list[MemoryRange] = []
        room = size
        while room and self._index < len(self._ranges):
            current = self._ranges[self._index]
            left = current.length - self._offset
            if left > room and piece:
                break
            length = min(left, room)
            piece.append(MemoryRange(current.gpa + self._offset, length))
            room -= length
            self._remaining -= length
            self._offset += length
            if self._offset == current.length:
                self._index += 1
                self._offset = 0
        return tuple(piece)
