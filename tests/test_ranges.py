"""Range arithmetic: merge, overlap detection, partition, layout checks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.guest_memory import LayoutError, check_layout
from livemig.common.ranges import (
    MemoryRange,
    RangeCursor,
    RangeTable,
    effective_page_size,
    find_overlap,
    merge_ranges,
)

ranges_strategy = st.lists(
    st.builds(MemoryRange, st.integers(0, 1 << 20), st.integers(0, 1 << 14)),
    max_size=30,
)


def covered(ranges: list[MemoryRange]) -> set[int]:
    return {byte for r in ranges for byte in range(r.gpa, r.end)}


@given(st.lists(st.builds(MemoryRange, st.integers(0, 4096), st.integers(0, 256)), max_size=20))
def test_merge_keeps_exactly_the_covered_bytes_sorted_disjoint_and_merged(ranges):
    merged = merge_ranges(ranges)
    assert covered(merged) == covered(ranges)
    for before, after in itertools.pairwise(merged):
        assert before.end < after.gpa  # disjoint and not touching: merged
    assert all(r.length > 0 for r in merged)


@given(ranges_strategy)
def test_find_overlap_agrees_with_byte_sets(ranges):
    nonempty = [r for r in ranges if r.length]
    overlapping = sum(r.length for r in nonempty) != len(covered(nonempty))
    assert (find_overlap(ranges) is not None) == overlapping


@given(ranges_strategy, st.integers(64, 1 << 15))
def test_partition_covers_table_in_order_with_bounded_chunks(ranges, chunk):
    table = RangeTable.of(ranges)
    chunks = list(table.partition(chunk))
    assert all(0 < c.total_bytes <= chunk for c in chunks)
    pieces = [r for c in chunks for r in c.ranges]
    assert merge_ranges(pieces) == list(table.ranges)
    assert pieces == sorted(pieces)
    assert all(r.length > 0 and any(t.contains(r) for t in table.ranges) for r in pieces)
    # Greedy: a chunk is only closed early when the next range would not fit whole.
    for current, following in itertools.pairwise(chunks):
        assert current.total_bytes == chunk or current.total_bytes + following.ranges[0].length > chunk


def test_partition_gathers_scattered_pages_into_one_chunk():
    table = RangeTable.of([MemoryRange(i * 8192, 4096) for i in range(100)])
    chunks = list(table.partition(1 << 20))
    assert len(chunks) == 1 and len(chunks[0]) == 100


def test_partition_splits_large_ranges_on_chunk_multiples():
    table = RangeTable.of([MemoryRange(0, 4096), MemoryRange(1 << 20, 3 * 8192)])
    chunks = [c.ranges for c in table.partition(8192)]
    assert chunks == [
        (MemoryRange(0, 4096),),
        (MemoryRange(1 << 20, 8192),),
        (MemoryRange((1 << 20) + 8192, 8192),),
        (MemoryRange((1 << 20) + 16384, 8192),),
    ]


@given(st.integers(0, 64).map(lambda n: n * 4096), st.integers(1, 64).map(lambda n: n * 4096))
def test_partition_of_aligned_range_with_page_multiple_chunks_is_page_aligned(gpa, length):
    table = RangeTable.of([MemoryRange(gpa, length)])
    for chunk in table.partition(3 * 4096):
        assert all(r.gpa % 4096 == 0 and r.length % 4096 == 0 for r in chunk.ranges)


@given(ranges_strategy, st.lists(st.integers(64, 1 << 15), min_size=1, max_size=8))
def test_cursor_with_changing_sizes_covers_table_in_order_with_bounded_pieces(ranges, sizes):
    table = RangeTable.of(ranges)
    cursor = RangeCursor(table.ranges)
    pieces, asked = [], []
    for size in itertools.cycle(sizes):
        if not cursor:
            break
        before = cursor.remaining_bytes
        piece = cursor.take(size)
        assert cursor.remaining_bytes == before - sum(r.length for r in piece)
        pieces.append(piece)
        asked.append(size)
    assert cursor.take(4096) == () and cursor.remaining_bytes == 0
    assert all(0 < sum(r.length for r in piece) <= size for piece, size in zip(pieces, asked, strict=True))
    flat = [r for piece in pieces for r in piece]
    assert merge_ranges(flat) == list(table.ranges) and flat == sorted(flat)
    assert all(r.length > 0 and any(t.contains(r) for t in table.ranges) for r in flat)
    # Greedy: a piece ends early only where what is left of the next range would not fit.
    for (current, size), following in zip(zip(pieces, asked, strict=True), pieces[1:], strict=False):
        total = sum(r.length for r in current)
        rest = next(t.end for t in table.ranges if t.contains(following[0])) - following[0].gpa
        assert total == size or total + rest > size


@given(
    st.lists(st.integers(1, 64).map(lambda n: n * 4096), min_size=1, max_size=6),
    st.lists(st.integers(1, 16).map(lambda n: n * 4096), min_size=1, max_size=5),
)
def test_cursor_pieces_of_aligned_ranges_with_page_multiple_sizes_are_page_aligned(lengths, sizes):
    gpas = itertools.accumulate(lengths, lambda gpa, length: gpa + 2 * length, initial=0)
    cursor = RangeCursor([MemoryRange(gpa, length) for gpa, length in zip(gpas, lengths, strict=False)])
    for size in itertools.cycle(sizes):
        if not cursor:
            break
        assert all(r.gpa % 4096 == 0 and r.length % 4096 == 0 for r in cursor.take(size))


def test_cursor_with_one_size_is_partition():
    table = RangeTable.of([MemoryRange(0, 4096), MemoryRange(1 << 20, 3 * 8192), MemoryRange(2 << 20, 100)])
    cursor = RangeCursor(table.ranges)
    assert [cursor.take(8192) for _ in range(5)] == [c.ranges for c in table.partition(8192)]
    with pytest.raises(ValueError):
        cursor.take(0)


def test_page_size_defaults_and_limits():
    assert effective_page_size(0) == 4096
    assert effective_page_size(2 << 20) == 2 << 20
    for bad in (3000, 256, 1 << 31):
        with pytest.raises(ValueError):
            effective_page_size(bad)


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ([], "no guest memory"),
        ([MemoryRange(0, 0)], "empty"),
        ([MemoryRange(100, 4096)], "not aligned"),
        ([MemoryRange(0, 5000)], "not a multiple"),
        ([MemoryRange(0, 8192), MemoryRange(4096, 4096)], "overlap"),
        ([MemoryRange((1 << 64) - 4096, 8192)], r"2\*\*64"),
        ([MemoryRange((1 << 64) - 4096, 4096)], r"2\*\*64"),  # ends exactly at 2**64: no uint64 holds the end
    ],
)
def test_check_layout_rejects_impossible_layouts(ranges, message):
    with pytest.raises(LayoutError, match=message):
        check_layout(ranges, 4096)


def test_check_layout_accepts_regions_with_a_gap():
    check_layout([MemoryRange(0, 8192), MemoryRange(1 << 32, 4096)], 4096)
