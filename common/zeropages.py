"""Split a span of guest memory into non-zero and all-zero parts, page by page.

The unit of the decision is the guest page. A span that does not start or end on
a page boundary has partial pages at its edges; each is its own unit and is
skipped only if all of its bytes are zero. Offsets are always derived from unit
boundaries, never accumulated: a running sum drifts after an unaligned head and
names the wrong GPA for the first data page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from livemig.common.guest_memory import MemoryLayout
from livemig.common.ranges import MemoryRange, align_down, ranges_from_array


@dataclass(frozen=True, slots=True)
class ZeroScan:
    """Outcome of scanning one span.

    `data` and `zero` are range arrays (k x 2 uint64: gpa, length), sorted,
    disjoint and merged; they go onto the wire as they are (common/wire.py).
    """

    data: np.ndarray
    zero: np.ndarray
    zero_pages: int
    normal_pages: int

    @property
    def data_ranges(self) -> list[MemoryRange]:
        return ranges_from_array(self.data)

    @property
    def zero_ranges(self) -> list[MemoryRange]:
        return ranges_from_array(self.zero)

    @property
    def zero_bytes(self) -> int:
        return int(self.zero[:, 1].sum())

    @property
    def data_bytes(self) -> int:
        return int(self.data[:, 1].sum())


EMPTY_RANGES = np.zeros((0, 2), dtype=np.uint64)


def unit_bounds(gpa: int, length: int, page_size: int) -> np.ndarray:
    """Offsets (relative to gpa) of unit boundaries: 0, page boundaries inside, length."""
    first_boundary = (-gpa) % page_size or page_size
    inner = np.arange(first_boundary, length, page_size, dtype=np.int64)
    return np.concatenate(([0], inner, [length])).astype(np.int64)


GATHER_ROWS = 128  # 512 KiB of 4 KiB pages: a block stays in a core's L2 cache


def page_flags(pages: np.ndarray) -> np.ndarray:
    """One flag per row of `pages` (one page, as words): True when any word is non-zero.

    A page that holds data almost always has a non-zero first word, so only the rows
    that start with a zero word are read in full (QEMU's buffer_is_zero also looks
    at a few words before the whole page): a chunk of written pages costs one cache
    line a page instead of a pass over 4 KiB. The doubtful rows are gathered
    GATHER_ROWS at a time, so each block is reduced from the cache it was just
    copied into; when most rows are doubtful (mostly zero pages: they must be read
    in full anyway) all rows are reduced in place instead, with no copy. Per 8 MiB
    (ms): half the pages zero 0.60 against 0.76 reducing every row; all zero 0.77
    either way.
    """
    flags = pages[:, 0] != 0
    doubtful = np.flatnonzero(~flags)
    if len(doubtful) * 3 > len(flags) * 2:
        return np.bitwise_or.reduce(pages, axis=1) != 0
    for start in range(0, len(doubtful), GATHER_ROWS):
        rows = doubtful[start : start + GATHER_ROWS]
        flags[rows] = np.bitwise_or.reduce(pages[rows], axis=1) != 0
    return flags


def _nonzero_flags(gpa: int, data: np.ndarray, units: int, page_size: int) -> np.ndarray:
    """One flag per unit: True when any byte of the unit is non-zero."""
    flags = np.empty(units, dtype=bool)
    head = min((-gpa) % page_size, len(data))
    first_full = 1 if head else 0
    if head:
        flags[0] = bool(data[:head].any())
    full_count = (len(data) - head) // page_size
    if full_count:
        body = data[head : head + full_count * page_size]
        if page_size % 8 == 0:
            if body.ctypes.data % 8:
                body = body.copy()  # unaligned head: realign so pages can be read as words
            pages = body.view(np.uint64).reshape(full_count, page_size // 8)
        else:
            pages = body.reshape(full_count, page_size)
        flags[first_full : first_full + full_count] = page_flags(pages)
    if first_full + full_count < units:
        flags[-1] = bool(data[head + full_count * page_size :].any())
    return flags


def _runs(gpa: int, bounds: np.ndarray, flags: np.ndarray, want: bool) -> np.ndarray:
    """Merged ranges (k x 2 uint64) covering the units whose flag equals `want`."""
    selected = flags == want
    if not selected.any():
        return EMPTY_RANGES
    padded = np.concatenate(([False], selected, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts = bounds[edges[0::2]].astype(np.uint64)
    stops = bounds[edges[1::2]].astype(np.uint64)
    return np.column_stack((starts + np.uint64(gpa), stops - starts))


def merge_contiguous(ranges: np.ndarray, boundaries: np.ndarray | None = None) -> np.ndarray:
    """Ranges (k x 2 uint64), in their order, each merged with the next where it ends
    at the next's start and that start is not in `boundaries` (region starts): the
    data ranges a scan returns when it finds no zero page."""
    if len(ranges) <= 1:
        return ranges
    starts = ranges[:, 0]
    ends = starts + ranges[:, 1]
    joins = starts[1:] == ends[:-1]
    if boundaries is not None and len(boundaries):
        joins &= ~np.isin(starts[1:], boundaries)
    first = np.flatnonzero(np.concatenate(([True], ~joins)))
    last = np.concatenate((first[1:], [len(ranges)])) - 1
    return np.column_stack((starts[first], ends[last] - starts[first]))


def scan_zero_pages(gpa: int, buffer: bytes | bytearray | memoryview, page_size: int) -> ZeroScan:
    """Classify the span [gpa, gpa + len(buffer)) whose bytes are `buffer`.

    A span whose units all hold data (dense memory, every chunk of a fully written
    guest) or are all zero is one range: its runs are not worked out unit by unit
    (a dozen numpy calls, about 0.1 ms a chunk whatever its size; stop 18)."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    length = len(data)
    if length == 0:
        return ZeroScan(EMPTY_RANGES, EMPTY_RANGES, 0, 0)
    units = count_pages(gpa, length, page_size)
    flags = _nonzero_flags(gpa, data, units, page_size)
    normal = int(np.count_nonzero(flags))
    if normal in (0, units):
        whole = np.array([[gpa, length]], dtype=np.uint64)
        if normal:
            return ZeroScan(data=whole, zero=EMPTY_RANGES, zero_pages=0, normal_pages=units)
        return ZeroScan(data=EMPTY_RANGES, zero=whole, zero_pages=units, normal_pages=0)
    bounds = unit_bounds(gpa, length, page_size)
    return ZeroScan(
        data=_runs(gpa, bounds, flags, True),
        zero=_runs(gpa, bounds, flags, False),
        zero_pages=units - normal,
        normal_pages=normal,
    )


def count_pages(gpa: int, length: int, page_size: int) -> int:
    """Number of page units (partial edge pages included) in a span: one, and one more
    for each page boundary strictly inside it (unit_bounds' inner boundaries)."""
    if length <= 0:
        return 0
    first_boundary = (-gpa) % page_size or page_size
    return 1 + max(0, -(-(length - first_boundary) // page_size))


def count_pages_in(ranges: np.ndarray, page_size: int) -> int:
    """count_pages summed over (gpa, length) rows of non-empty ranges, in one pass."""
    if not len(ranges):
        return 0
    page = np.uint64(page_size)
    starts = ranges[:, 0]
    ends = starts + ranges[:, 1]
    return int(((ends + page - np.uint64(1)) // page - starts // page).sum())


def scan_guest_range(layout: MemoryLayout, gpa: int, buffer: memoryview, page_size: int) -> ZeroScan:
    """Read and scan [gpa, gpa+len(buffer)) of guest memory into buffer.

    A file hole at the start of the span is zero without being read (SEEK_DATA);
    the rest, from the page unit where data may start, is read into its place in
    `buffer` and scanned. Bytes of `buffer` over the hole are left as they were:
    no data range points there.
    """
    length = len(buffer)
    data_start = max(gpa, align_down(layout.data_start(gpa, length), page_size))
    data = EMPTY_RANGES
    normal_pages = 0
    if data_start == gpa:  # no hole in front (the common case): one read, one scan
        layout.read_into(gpa, buffer)
        return scan_zero_pages(gpa, buffer, page_size)
    if data_start < gpa + length:
        piece = buffer[data_start - gpa :]
        layout.read_into(data_start, piece)
        scan = scan_zero_pages(data_start, piece, page_size)
        data, normal_pages = scan.data, scan.normal_pages
    zero = _complement(gpa, length, data)
    return ZeroScan(data, zero, count_pages(gpa, length, page_size) - normal_pages, normal_pages)


def _complement(gpa: int, length: int, data: np.ndarray) -> np.ndarray:
    """Ranges of [gpa, gpa+length) not covered by the sorted, disjoint `data`."""
    if not len(data):
        return np.array([[gpa, length]], dtype=np.uint64) if length else EMPTY_RANGES
    starts = np.concatenate(([np.uint64(gpa)], data[:, 0] + data[:, 1]))
    stops = np.concatenate((data[:, 0], [np.uint64(gpa + length)]))
    keep = stops > starts
    return np.column_stack((starts[keep], stops[keep] - starts[keep]))


def scan_pages(
    page_gpas: np.ndarray, buffer: memoryview, page_size: int, boundaries: np.ndarray | None = None
) -> tuple[ZeroScan, np.ndarray]:
    """Scan whole pages gathered from anywhere into one buffer, in one vectorised pass.

    `buffer` holds len(page_gpas) pages back to back; page i belongs at page_gpas[i]
    (ascending). Runs of non-zero (and of zero) pages merge only where their gpas
    are contiguous and no gpa of `boundaries` (region starts) lies between them.
    Returns the scan and, for each data range, its byte offset in `buffer`.
    Scattered dirty pages thus cost numpy calls per chunk, not per page.
    """
    count = len(page_gpas)
    if count == 0:
        return ZeroScan(EMPTY_RANGES, EMPTY_RANGES, 0, 0), np.zeros(0, dtype=np.int64)
    data = np.frombuffer(buffer, dtype=np.uint8, count=count * page_size)
    if page_size % 8 == 0 and data.ctypes.data % 8 == 0:
        pages = data.view(np.uint64).reshape(count, page_size // 8)
    else:
        pages = data.reshape(count, page_size)
    flags = page_flags(pages)
    gpas = page_gpas.astype(np.uint64)
    contiguous = np.empty(count, dtype=bool)
    contiguous[0] = False
    contiguous[1:] = gpas[1:] == gpas[:-1] + np.uint64(page_size)
    if boundaries is not None and len(boundaries):
        contiguous &= ~np.isin(gpas, boundaries)

    def runs(want: bool) -> tuple[np.ndarray, np.ndarray]:
        selected = flags == want
        starts = np.flatnonzero(selected & ~(contiguous & np.concatenate(([False], selected[:-1]))))
        ends = np.flatnonzero(selected & ~np.concatenate((contiguous[1:] & selected[1:], [False]))) + 1
        lengths = (ends - starts).astype(np.uint64) * np.uint64(page_size)
        return np.column_stack((gpas[starts], lengths)).reshape(-1, 2), starts * page_size

    data_runs, data_offsets = runs(True)
    zero_runs, _ = runs(False)
    normal = int(np.count_nonzero(flags))
    return ZeroScan(data_runs, zero_runs, count - normal, normal), data_offsets
