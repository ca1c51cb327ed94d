"""Zero-page splitting: every non-zero byte is sent to the right gpa, every skipped byte is zero."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.common.guest_memory import open_source_layout
from livemig.common.ranges import MemoryRange, merge_ranges
from livemig.common.zeropages import (
    count_pages,
    count_pages_in,
    merge_contiguous,
    page_flags,
    scan_guest_range,
    scan_pages,
    scan_zero_pages,
    unit_bounds,
)


def test_seed_worked_example_unaligned_head():
    """Review of the seed PR: 2 KiB zero, 4 KiB data, 4 KiB zero from gpa 0x800.

    Units: [0x800,0x1000) zero (a partial page), [0x1000,0x2000) data, [0x2000,0x3000)
    zero. The data range must be at gpa 0x1000, not 0x800.
    """
    buffer = bytearray(2048 + 4096 + 4096)
    buffer[2048 : 2048 + 4096] = b"\x01" * 4096
    scan = scan_zero_pages(0x800, buffer, 4096)
    assert scan.data_ranges == [MemoryRange(0x1000, 4096)]
    assert scan.zero_ranges == [MemoryRange(0x800, 0x800), MemoryRange(0x2000, 0x1000)]
    assert scan.normal_pages == 1 and scan.zero_pages == 2


def test_partial_edge_page_with_one_nonzero_byte_is_sent_whole():
    buffer = bytearray(100 + 4096)
    buffer[99] = 7  # last byte of the partial head unit
    scan = scan_zero_pages(4096 - 100, buffer, 4096)
    assert scan.data_ranges == [MemoryRange(4096 - 100, 100)]
    assert scan.zero_ranges == [MemoryRange(4096, 4096)]


@st.composite
def spans(draw):
    page_size = draw(st.sampled_from([512, 1024, 4096]))
    gpa = draw(st.integers(0, 1 << 40))
    length = draw(st.integers(0, 12 * page_size))
    data = np.zeros(length, dtype=np.uint8)
    writes = draw(st.lists(st.tuples(st.integers(0, max(length - 1, 0)), st.integers(1, 255)), max_size=12))
    if length:
        for offset, value in writes:
            data[offset] = value
    if length and draw(st.booleans()):  # whole pages of random data too
        start = draw(st.integers(0, length - 1))
        stop = draw(st.integers(start, length))
        data[start:stop] = draw(st.integers(1, 255))
    return gpa, data.tobytes(), page_size


@settings(max_examples=300)
@given(spans())
def test_scan_properties(span):
    gpa, data, page_size = span
    scan = scan_zero_pages(gpa, data, page_size)
    whole = MemoryRange(gpa, len(data))
    # Data and zero ranges tile the span exactly.
    assert merge_ranges([*scan.data_ranges, *scan.zero_ranges]) == ([whole] if data else [])
    assert scan.data_bytes + scan.zero_bytes == len(data)
    for ranges in (scan.data_ranges, scan.zero_ranges):
        assert ranges == merge_ranges(ranges)  # sorted, disjoint, merged
    # Every skipped byte is zero; every non-zero byte lies in a data range.
    for r in scan.zero_ranges:
        assert not any(data[r.gpa - gpa : r.end - gpa])
    nonzero = {gpa + i for i, b in enumerate(data) if b}
    assert all(any(r.gpa <= byte < r.end for r in scan.data_ranges) for byte in nonzero)
    # Reassembling the data ranges on a zero destination gives the source back.
    destination = bytearray(len(data))
    for r in scan.data_ranges:
        destination[r.gpa - gpa : r.end - gpa] = data[r.gpa - gpa : r.end - gpa]
    assert bytes(destination) == data
    # Ranges break only at page boundaries or the span's edges.
    for r in [*scan.data_ranges, *scan.zero_ranges]:
        assert r.gpa == gpa or r.gpa % page_size == 0
        assert r.end == gpa + len(data) or r.end % page_size == 0
    # Every data unit holds a non-zero byte (no zero page is ever sent).
    assert scan.zero_pages + scan.normal_pages == count_pages(gpa, len(data), page_size)


def test_all_zero_and_all_data():
    assert scan_zero_pages(0, bytes(1 << 20), 4096).data_ranges == []
    full = scan_zero_pages(0, b"\xff" * (1 << 20), 4096)
    assert full.data_ranges == [MemoryRange(0, 1 << 20)] and full.normal_pages == 256


@pytest.mark.parametrize("fill", [0, 0xFF])
@pytest.mark.parametrize("gpa, length", [(0, 4096), (100, 4096), (4096 - 100, 100), (4000, 3 * 4096 + 5), (0, 1)])
def test_a_uniform_span_is_one_range_of_its_kind(fill, gpa, length):
    """All data or all zero, unaligned edges included: one range, and every unit counted."""
    scan = scan_zero_pages(gpa, bytes([fill]) * length, 4096)
    whole = [MemoryRange(gpa, length)]
    units = count_pages(gpa, length, 4096)
    assert (scan.data_ranges, scan.zero_ranges) == ((whole, []) if fill else ([], whole))
    assert (scan.normal_pages, scan.zero_pages) == ((units, 0) if fill else (0, units))
    assert scan.data.dtype == scan.zero.dtype == np.uint64 and scan.data.shape[1:] == scan.zero.shape[1:] == (2,)


@settings(max_examples=500)
@given(st.integers(0, 1 << 44), st.integers(0, 1 << 20), st.sampled_from([512, 4096, 16384, 2 << 20]))
def test_count_pages_counts_the_units_unit_bounds_makes(gpa, length, page_size):
    assert count_pages(gpa, length, page_size) == (len(unit_bounds(gpa, length, page_size)) - 1 if length else 0)


@st.composite
def sparse_files(draw):
    page_size = draw(st.sampled_from([512, 4096, 16384]))
    size = draw(st.integers(1, 40)) * 16384
    writes = draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 20000), st.sampled_from([0, 1, 255])), max_size=8)
    )
    span_start = draw(st.integers(0, size // page_size - 1)) * page_size
    span_length = draw(st.integers(1, size - span_start))
    return page_size, size, writes, span_start, span_length


@settings(max_examples=80)
@given(sparse_files())
def test_scan_guest_range_skips_holes_but_agrees_with_a_full_scan(tmp_path_factory, case):
    """Holes are skipped unread; written zeros are still zero pages; the verdict is the same."""
    page_size, size, writes, span_start, span_length = case
    path = tmp_path_factory.mktemp("sparse", numbered=True) / "guest.img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    for offset, length, value in writes:
        os.pwrite(fd, bytes([value]) * min(length, size - offset), offset)
    os.close(fd)
    gpa = 1 << 32
    layout = open_source_layout([(gpa, str(path))], page_size)
    try:
        content = path.read_bytes()[span_start : span_start + span_length]
        expected = scan_zero_pages(gpa + span_start, content, page_size)
        buffer = memoryview(bytearray(span_length))
        got = scan_guest_range(layout, gpa + span_start, buffer, page_size)
    finally:
        layout.close()
    assert got.data_ranges == expected.data_ranges
    assert got.zero_ranges == expected.zero_ranges
    assert (got.zero_pages, got.normal_pages) == (expected.zero_pages, expected.normal_pages)
    for r in got.data_ranges:
        start = r.gpa - gpa - span_start
        assert bytes(buffer[start : start + r.length]) == content[start : start + r.length]


@settings(max_examples=100)
@given(
    st.sampled_from([512, 4096]),
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), min_size=1, max_size=12, unique_by=lambda t: t[0]),
    st.data(),
)
def test_scan_pages_agrees_with_per_range_scans(page_size, spans, data):
    """Gathered pages scanned at once give the same ranges as scanning each range alone."""
    ranges, position, taken = [], 0, set()
    for first, count in sorted(spans):
        pages = [p for p in range(first, first + count) if p not in taken]
        taken.update(pages)
        ranges.extend(MemoryRange(p * page_size, page_size) for p in pages)
    ranges = merge_ranges(ranges)
    total = sum(r.length for r in ranges)
    contents = bytearray(total)
    for page in range(total // page_size):
        if data.draw(st.booleans()):
            contents[page * page_size + data.draw(st.integers(0, page_size - 1))] = 1
    page_gpas = np.concatenate([np.arange(r.gpa, r.end, page_size, dtype=np.uint64) for r in ranges])
    scan, offsets = scan_pages(page_gpas, memoryview(contents), page_size)
    expected_data, expected_zero, normal = [], [], 0
    for r in ranges:
        piece = contents[position : position + r.length]
        single = scan_zero_pages(r.gpa, piece, page_size)
        expected_data += single.data_ranges
        expected_zero += single.zero_ranges
        normal += single.normal_pages
        position += r.length
    assert scan.data_ranges == merge_ranges(expected_data)
    assert scan.zero_ranges == merge_ranges(expected_zero)
    assert scan.normal_pages == normal and scan.zero_pages == total // page_size - normal
    # Each data range's bytes sit at its offset in the gathered buffer.
    gathered = {int(g): i * page_size for i, g in enumerate(page_gpas.tolist())}
    for r, offset in zip(scan.data_ranges, offsets.tolist(), strict=True):
        assert gathered[r.gpa] == offset


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), min_size=1, max_size=12, unique_by=lambda t: t[0]),
    st.lists(st.integers(0, 48), max_size=4),
)
def test_merge_contiguous_is_what_a_scan_of_all_data_pages_returns(spans, boundary_pages):
    """The header a connection writes before reading (all data) equals the scan's when
    no page is zero: same merged ranges, never across a region start."""
    page_size = 4096
    taken: set[int] = set()
    ranges = []
    for first, count in sorted(spans):
        pages = [p for p in range(first, first + count) if p not in taken]
        taken.update(pages)
        ranges.extend((p * page_size, page_size) for p in pages)
    array = np.array(ranges, dtype=np.uint64).reshape(-1, 2)
    boundaries = np.array([p * page_size for p in boundary_pages], dtype=np.uint64)
    page_gpas = np.concatenate([np.arange(g, g + n, page_size, dtype=np.uint64) for g, n in ranges])
    all_data = memoryview(b"\x01" * (len(page_gpas) * page_size))
    scan, _offsets = scan_pages(page_gpas, all_data, page_size, boundaries)
    merged = merge_contiguous(array, boundaries)
    assert merged.tolist() == scan.data.tolist()
    assert int(merged[:, 1].sum()) == len(page_gpas) * page_size


@given(st.lists(st.tuples(st.integers(-1, 63), st.integers(1, (1 << 64) - 1)), min_size=1, max_size=40))
def test_page_flags_reads_doubtful_pages_in_full(rows):
    """Each row: no data (-1), or one non-zero word at a position; first words zero or not."""
    pages = np.zeros((len(rows), 64), dtype=np.uint64)
    for index, (word, value) in enumerate(rows):
        if word >= 0:
            pages[index, word] = value
    assert page_flags(pages).tolist() == [word >= 0 for word, _value in rows]


@pytest.mark.parametrize("zero_share", [0.0, 0.3, 0.5, 0.66, 0.7, 1.0])
def test_page_flags_over_many_gathered_blocks(zero_share):
    """A chunk of 2048 pages, gathered 128 doubtful rows at a time or reduced whole: every
    page that holds a byte anywhere (first word zero or not) is found, no zero page is."""
    from livemig.common.zeropages import GATHER_ROWS

    rng = np.random.default_rng(7)
    pages = np.zeros((2048, 512), dtype=np.uint64)
    data = rng.random(2048) >= zero_share
    pages[data, rng.integers(0, 512, size=int(data.sum()))] = 1  # one word, often not the first
    pages[data & (rng.random(2048) < 0.5), 0] = 3
    assert len(pages) > 4 * GATHER_ROWS
    assert page_flags(pages).tolist() == data.tolist()


@given(
    st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(1, 1 << 24)), max_size=20),
    st.sampled_from([512, 4096, 2 << 20]),
)
def test_pages_of_many_ranges_at_once_are_the_sum_of_each(rows, page_size):
    ranges = np.array(rows, dtype=np.uint64).reshape(-1, 2)
    assert count_pages_in(ranges, page_size) == sum(count_pages(gpa, length, page_size) for gpa, length in rows)
