"""The pure batch builder: read, scan and frame one chunk, without gRPC or processes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.guest_memory import MemoryLayout, open_source_layout
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch
from livemig.sender.batch_builder import BatchBuilder, TransferPlan, _gather_into, _page_numbers, _payload, _Scanned
from livemig.sender.chunks import Chunk

PAGE = 4096
PAGES = 64
GPA = 1 << 32  # a region that does not start at 0


def write_guest(path: Path, touched: list[int]) -> bytes:
    """PAGES pages, the `touched` ones holding non-zero bytes; returns the contents."""
    contents = bytearray(PAGES * PAGE)
    for page in touched:
        contents[page * PAGE : (page + 1) * PAGE] = bytes([page % 250 + 1]) * PAGE
    path.write_bytes(bytes(contents))
    return bytes(contents)


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[tuple[MemoryLayout, bytes]]:
    contents = write_guest(tmp_path / "guest.img", [0, 1, 5, 9, 10, 11, 40, 63])
    layout = open_source_layout([(GPA, str(tmp_path / "guest.img"))], PAGE)
    yield layout, contents
    layout.close()


def builder(layout: MemoryLayout, skip: bool, chunk_bytes: int = PAGES * PAGE) -> BatchBuilder:
    return BatchBuilder(TransferPlan("token", layout, PAGE, chunk_bytes, skip))


def pages_of(ranges: np.ndarray) -> list[int]:
    return [
        int(page)
        for gpa, length in ranges.tolist()
        for page in range((gpa - GPA) // PAGE, (gpa - GPA + length) // PAGE)
    ]


def reassembled(built, first: int, count: int) -> bytes:
    """The pages [first, first + count) as the destination holds them after this batch."""
    rebuilt = bytearray(count * PAGE)
    if built.frame is not None:
        batch = decode_batch(built.frame)
        position = 0
        for gpa, length in batch.ranges.tolist():
            offset = gpa - GPA - first * PAGE
            rebuilt[offset : offset + length] = batch.data[position : position + length]
            position += length
    return bytes(rebuilt)


def test_without_skipping_every_byte_goes_out(guest):
    layout, contents = guest
    built = builder(layout, skip=False).build(Chunk(7, (MemoryRange(GPA, PAGES * PAGE),), zero_records=False))
    batch = decode_batch(built.frame)
    assert batch.header.batch_id == 7 and batch.header.session_token == "token"
    assert bytes(batch.data) == contents
    assert built.outcome.transmitted_bytes == PAGES * PAGE and built.outcome.scanned_bytes == 0
    assert built.outcome.normal_pages == PAGES and built.outcome.batches == 1
    assert built.outcome.wire_bytes == len(built.frame) + 5


def test_skipping_sends_only_non_zero_pages(guest):
    layout, contents = guest
    built = builder(layout, skip=True).build(Chunk(1, (MemoryRange(GPA, PAGES * PAGE),), zero_records=False))
    batch = decode_batch(built.frame)
    assert pages_of(batch.ranges) == [0, 1, 5, 9, 10, 11, 40, 63]
    assert bytes(batch.data) == b"".join(contents[p * PAGE : (p + 1) * PAGE] for p in pages_of(batch.ranges))
    assert len(batch.zero_ranges) == 0  # iteration 0: the destination is zero already
    outcome = built.outcome
    assert outcome.zero_pages == PAGES - 8 and outcome.normal_pages == 8
    assert outcome.zero_bytes + outcome.transmitted_bytes == outcome.scanned_bytes == PAGES * PAGE
    assert outcome.zeroed_bytes == 0


def test_dirty_pages_gathered_with_zero_records(guest):
    layout, _contents = guest
    dirty = (
        MemoryRange(GPA + 2 * PAGE, PAGE),
        MemoryRange(GPA + 9 * PAGE, 3 * PAGE),
        MemoryRange(GPA + 40 * PAGE, PAGE),
    )
    built = builder(layout, skip=True).build(Chunk(3, dirty, zero_records=True))
    batch = decode_batch(built.frame)
    assert pages_of(batch.ranges) == [9, 10, 11, 40]
    assert pages_of(batch.zero_ranges) == [2]  # dirtied, now zero: the destination must zero it
    assert built.outcome.zeroed_bytes == PAGE


def test_an_all_zero_chunk_needs_no_batch(guest):
    layout, _contents = guest
    built = builder(layout, skip=True).build(Chunk(4, (MemoryRange(GPA + 12 * PAGE, 20 * PAGE),), zero_records=False))
    assert built.frame is None
    assert built.outcome.zero_bytes == 20 * PAGE and built.outcome.batches == 0 and built.outcome.wire_bytes == 0


@pytest.mark.parametrize("zero_records", [False, True])
def test_a_later_attempt_is_framed_with_its_number_even_when_all_zero(guest, zero_records):
    """A chunk read again (its connection process died) may have turned all-zero; its
    earlier reading may have reached the receiver, so this one goes out, empty or not."""
    layout, _contents = guest
    make = builder(layout, skip=True)
    zero = make.build(Chunk(4, (MemoryRange(GPA + 12 * PAGE, 20 * PAGE),), zero_records, attempt=2))
    batch = decode_batch(zero.frame)
    assert (batch.header.batch_id, batch.header.attempt) == (4, 2)
    assert len(batch.ranges) == 0 and len(batch.data) == 0
    assert pages_of(batch.zero_ranges) == (list(range(12, 32)) if zero_records else [])
    assert zero.outcome.batches == 1 and zero.outcome.transmitted_bytes == 0
    for ranges in ((MemoryRange(GPA, 2 * PAGE),), (MemoryRange(GPA, 3 * PAGE),)):  # read in place, framed again
        built = make.build(Chunk(5, ranges, zero_records, attempt=1))
        assert decode_batch(built.frame).header.attempt == 1


@given(st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES), st.integers(0, PAGES - 1), st.integers(1, 16))
def test_any_chunk_reassembles_to_the_source(tmp_path_factory, touched, first, count):
    directory = tmp_path_factory.mktemp("guest")
    contents = write_guest(directory / "guest.img", touched)
    layout = open_source_layout([(GPA, str(directory / "guest.img"))], PAGE)
    try:
        count = min(count, PAGES - first)
        chunk = Chunk(9, (MemoryRange(GPA + first * PAGE, count * PAGE),), zero_records=True)
        built = builder(layout, skip=True).build(chunk)
        assert reassembled(built, first, count) == contents[first * PAGE : (first + count) * PAGE]
        assert built.outcome.zero_bytes + built.outcome.transmitted_bytes == count * PAGE
    finally:
        layout.close()


PADDING_FIRST = b"\x2a"  # the padding field's key: the frame was read into in place


def test_a_chunk_without_zero_pages_is_sent_as_read(guest):
    layout, contents = guest
    chunk = Chunk(2, (MemoryRange(GPA + 9 * PAGE, 3 * PAGE),), zero_records=True)
    for skip in (True, False):
        built = builder(layout, skip=skip).build(chunk)
        assert built.frame[:1] == PADDING_FIRST
        batch = decode_batch(built.frame)
        assert bytes(batch.data) == contents[9 * PAGE : 12 * PAGE]
        assert batch.ranges.tolist() == [[GPA + 9 * PAGE, 3 * PAGE]] and not len(batch.zero_ranges)
        assert built.outcome.transmitted_bytes == 3 * PAGE and built.outcome.wire_bytes == len(built.frame) + 5


def test_a_chunk_with_zero_pages_is_framed_again_with_only_its_data(guest):
    layout, contents = guest
    built = builder(layout, skip=True).build(Chunk(2, (MemoryRange(GPA + 8 * PAGE, 4 * PAGE),), zero_records=False))
    batch = decode_batch(built.frame)
    assert pages_of(batch.ranges) == [9, 10, 11]
    assert bytes(batch.data) == contents[9 * PAGE : 12 * PAGE]
    assert len(built.frame) < 4 * PAGE  # the zero page is not in it


def test_ranges_read_in_place_never_merge_across_regions(tmp_path):
    """Two regions back to back in gpa space: one all-data chunk over both keeps two ranges."""
    first = write_guest(tmp_path / "a.img", list(range(PAGES)))
    second = write_guest(tmp_path / "b.img", list(range(PAGES)))
    end = GPA + PAGES * PAGE
    layout = open_source_layout([(GPA, str(tmp_path / "a.img")), (end, str(tmp_path / "b.img"))], PAGE)
    try:
        chunk = Chunk(1, (MemoryRange(end - 2 * PAGE, 2 * PAGE), MemoryRange(end, 2 * PAGE)), zero_records=False)
        for skip in (True, False):
            batch = decode_batch(builder(layout, skip=skip).build(chunk).frame)
            assert batch.ranges.tolist() == [[end - 2 * PAGE, 2 * PAGE], [end, 2 * PAGE]]
            assert bytes(batch.data) == first[-2 * PAGE :] + second[: 2 * PAGE]
    finally:
        layout.close()


@given(
    st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES),
    st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 6)), min_size=1, max_size=6),
    st.booleans(),
    st.booleans(),
    st.integers(0, PAGE - 1),
)
def test_any_chunk_of_any_shape_reassembles(tmp_path_factory, touched, spans, skip, zero_records, head):
    """Gathered page ranges, or one unaligned range: in place or framed again, the
    destination ends up with the source's bytes and the counters add up."""
    directory = tmp_path_factory.mktemp("guest")
    contents = write_guest(directory / "guest.img", touched)
    layout = open_source_layout([(GPA, str(directory / "guest.img"))], PAGE)
    try:
        pages = sorted({p for first, count in spans for p in range(first, min(first + count, PAGES))})
        if len(pages) > 1:
            ranges = tuple(MemoryRange(GPA + p * PAGE, PAGE) for p in pages)
        else:  # one range with partial pages at both ends
            length = min(PAGES * PAGE - head, pages[0] * PAGE + PAGE)
            ranges = (MemoryRange(GPA + head, length - head) if length > head else MemoryRange(GPA, PAGE),)
        chunk = Chunk(5, ranges, zero_records=zero_records)
        built = builder(layout, skip=skip).build(chunk)
        destination = bytearray(PAGES * PAGE)
        for r in ranges:  # what the destination held before: anything; zero records must clear it
            destination[r.gpa - GPA : r.gpa - GPA + r.length] = b"\xee" * r.length if zero_records else bytes(r.length)
        if built.frame is not None:
            batch = decode_batch(built.frame)
            position = 0
            for gpa, length in batch.ranges.tolist():
                destination[gpa - GPA : gpa - GPA + length] = batch.data[position : position + length]
                position += length
            assert position == len(batch.data)
            for gpa, length in batch.zero_ranges.tolist():
                destination[gpa - GPA : gpa - GPA + length] = bytes(length)
        for r in ranges:
            assert destination[r.gpa - GPA : r.gpa - GPA + r.length] == contents[r.gpa - GPA : r.gpa - GPA + r.length]
        outcome = built.outcome
        assert outcome.transmitted_bytes + outcome.zero_bytes == chunk.length
        assert (built.frame is None) == (outcome.batches == 0)
    finally:
        layout.close()


@st.composite
def scanned_parts(draw) -> list[_Scanned]:
    """Ranges with their bytes and sorted, disjoint data runs: whole pages mostly, and
    sometimes a range or runs off page boundaries (the run-by-run copy)."""
    parts, gpa = [], GPA
    for _ in range(draw(st.integers(1, 4))):
        aligned = draw(st.booleans())
        unit = PAGE if aligned else 512
        units = draw(st.integers(1, 24))
        view = memoryview(np.random.default_rng(draw(st.integers(0, 99))).integers(1, 255, units * unit, np.uint8))
        cuts = sorted(set(draw(st.lists(st.integers(0, units), max_size=10))) | {0, units})
        runs = [(gpa + a * unit, (b - a) * unit) for a, b in itertools.pairwise(cuts) if draw(st.booleans())]
        parts.append(_Scanned(gpa, view, np.array(runs, dtype=np.uint64).reshape(-1, 2)))
        gpa += units * unit + PAGE
    return parts


@given(scanned_parts())
def test_data_pages_are_gathered_as_joined(parts):
    """One numpy take per page-aligned range puts the same bytes in the frame, in the same
    order, as copying each data run."""
    expected = b"".join(_payload(parts))
    frame = bytearray(len(expected))
    _gather_into(parts, memoryview(frame), PAGE)
    assert bytes(frame) == expected


def test_page_numbers_of_runs():
    assert _page_numbers(np.array([3, 10, 20]), np.array([2, 1, 3])).tolist() == [3, 4, 10, 20, 21, 22]
    assert _page_numbers(np.array([], dtype=np.uint64), np.array([], dtype=np.uint64)).tolist() == []


def test_after_a_chunk_without_zero_pages_the_next_is_read_not_mapped(tmp_path, monkeypatch):
    """Dense memory comes in runs: after a chunk with no zero page the mapping (its page
    tables cost more than they save there) is skipped for the next, until a chunk has
    zero pages again. Every frame is right whichever way it was read."""
    dense, sparse = list(range(32)), [33, 40, 41, 50]
    contents = write_guest(tmp_path / "guest.img", dense + sparse)
    layout = open_source_layout([(GPA, str(tmp_path / "guest.img"))], PAGE)
    mapped = []
    resident_window = layout.resident_window

    def counted_window(gpa: int, length: int):
        mapped.append(gpa)
        return resident_window(gpa, length)

    monkeypatch.setattr(layout, "resident_window", counted_window)
    try:
        chunks = builder(layout, skip=True)
        # (first page, count, read through a mapping?, dense afterwards?)
        steps = [
            (0, 8, True, True),
            (8, 8, False, True),
            (16, 16, False, True),
            (32, 16, False, False),  # guessed dense, read with pread: framed again all the same
            (48, 16, True, False),
        ]
        for number, (first, count, through_mapping, dense_after) in enumerate(steps):
            before = len(mapped)
            chunk = Chunk(number + 1, (MemoryRange(GPA + first * PAGE, count * PAGE),), zero_records=False)
            built = chunks.build(chunk)
            assert (len(mapped) > before) == through_mapping, (first, count)
            assert chunks.last_chunk_dense == dense_after
            assert reassembled(built, first, count) == contents[first * PAGE : (first + count) * PAGE]
    finally:
        layout.close()


@given(
    st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES),
    st.lists(st.tuples(st.integers(0, PAGES - 1), st.integers(1, 16)), min_size=1, max_size=8),
)
def test_one_builder_reassembles_any_sequence_of_chunks(tmp_path_factory, touched, steps):
    """A connection's builder carries what the last chunk was like into the next: any
    order of dense and sparse chunks still reassembles to the source."""
    directory = tmp_path_factory.mktemp("guest")
    contents = write_guest(directory / "guest.img", touched)
    layout = open_source_layout([(GPA, str(directory / "guest.img"))], PAGE)
    try:
        chunks = builder(layout, skip=True)
        for number, (first, count) in enumerate(steps):
            count = min(count, PAGES - first)
            chunk = Chunk(number + 1, (MemoryRange(GPA + first * PAGE, count * PAGE),), zero_records=True)
            built = chunks.build(chunk)
            assert reassembled(built, first, count) == contents[first * PAGE : (first + count) * PAGE]
            assert built.outcome.zero_bytes + built.outcome.transmitted_bytes == count * PAGE
            assert chunks.last_chunk_dense == (built.outcome.zero_pages == 0)
    finally:
        layout.close()


@given(
    st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES),
    st.integers(1, PAGES),
    st.integers(0, PAGES - 2),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_a_chunk_larger_than_the_batch_limit_goes_out_in_pieces_that_add_up(
    tmp_path_factory, touched, limit_pages, gap_at, skip, zero_records, scattered
):
    """A span beyond the batch limit (sender/chunk_spans.py): each batch carries at most the
    limit, ends on a page boundary, and leaves the rest of its chunk as the remainder;
    building the remainders in turn puts every byte of the chunk at the destination and
    counts every page once."""
    directory = tmp_path_factory.mktemp("guest")
    contents = write_guest(directory / "guest.img", touched)
    layout = open_source_layout([(GPA, str(directory / "guest.img"))], PAGE)
    limit = limit_pages * PAGE
    try:
        # Two ranges, as a remainder followed by the next span comes: a page left out between.
        ranges = (MemoryRange(GPA, gap_at * PAGE), MemoryRange(GPA + (gap_at + 1) * PAGE, (PAGES - gap_at - 1) * PAGE))
        ranges = tuple(r for r in ranges if r.length)
        if scattered:  # dirty pages: a range each, read back to back and scanned in one pass
            ranges = tuple(MemoryRange(GPA + page * PAGE, PAGE) for page in range(PAGES) if page != gap_at)
        destination = bytearray(b"\xee" * (PAGES * PAGE)) if zero_records else bytearray(PAGES * PAGE)
        chunk_builder = builder(layout, skip=skip, chunk_bytes=limit)
        left, counted, batches = ranges, [], 0
        while left:
            chunk = Chunk(batches + 1, left, zero_records=zero_records)
            built = chunk_builder.build(chunk)
            batches += 1
            outcome = built.outcome
            covered = [r for r in left if r.gpa < (built.remainder[0].gpa if built.remainder else 1 << 62)]
            assert 0 < outcome.chunk_bytes <= chunk.length and outcome.transmitted_bytes <= limit
            assert outcome.chunk_bytes + sum(r.length for r in built.remainder) == chunk.length
            assert outcome.transmitted_bytes + outcome.zero_bytes == outcome.chunk_bytes
            assert outcome.normal_pages + outcome.zero_pages == outcome.chunk_bytes // PAGE
            assert all(r.gpa % PAGE == 0 and r.length % PAGE == 0 for r in built.remainder)
            counted.append(outcome.chunk_bytes)
            if built.frame is not None:
                batch = decode_batch(built.frame)
                assert len(batch.data) <= limit
                position = 0
                for gpa, length in batch.ranges.tolist():
                    destination[gpa - GPA : gpa - GPA + length] = batch.data[position : position + length]
                    position += length
                for gpa, length in batch.zero_ranges.tolist():
                    destination[gpa - GPA : gpa - GPA + length] = bytes(length)
                ends = [gpa + length for gpa, length in np.concatenate((batch.ranges, batch.zero_ranges)).tolist()]
                if built.remainder:  # nothing of the remainder went in this batch
                    assert max(ends) <= built.remainder[0].gpa
            assert covered
            left = built.remainder
        for r in ranges:
            assert destination[r.gpa - GPA : r.gpa - GPA + r.length] == contents[r.gpa - GPA : r.gpa - GPA + r.length]
        assert sum(counted) == sum(r.length for r in ranges)
        data_pages = sum(1 for p in touched if any(r.gpa <= GPA + p * PAGE < r.end for r in ranges))
        if skip:  # at most one batch more than the data pages need
            assert batches <= -(-data_pages * PAGE // limit) + 1
    finally:
        layout.close()
