"""Range arithmetic: merge, overlap detection, partition, layout checks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.guest_memory import LayoutError, check_layout
from livemig.common.ranges import MemoryRange, RangeTable, effective_page_size, find_overlap, merge_ranges

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
    chunks = [c.ranges[0] for c in table.partition(chunk)]
    assert all(0 < c.length <= chunk for c in chunks)
    assert merge_ranges(chunks) == list(table.ranges)
    assert chunks == sorted(chunks)
    assert all(any(r.contains(c) for r in table.ranges) for c in chunks)


@given(st.integers(0, 64).map(lambda n: n * 4096), st.integers(1, 64).map(lambda n: n * 4096))
def test_partition_of_aligned_range_with_page_multiple_chunks_is_page_aligned(gpa, length):
    table = RangeTable.of([MemoryRange(gpa, length)])
    for chunk in table.partition(3 * 4096):
        assert chunk.ranges[0].gpa % 4096 == 0 and chunk.ranges[0].length % 4096 == 0


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
        ([MemoryRange((1 << 64) - 4096, 8192)], "64-bit"),
    ],
)
def test_check_layout_rejects_impossible_layouts(ranges, message):
    with pytest.raises(LayoutError, match=message):
        check_layout(ranges, 4096)


def test_check_layout_accepts_regions_with_a_gap():
    check_layout([MemoryRange(0, 8192), MemoryRange(1 << 32, 4096)], 4096)
