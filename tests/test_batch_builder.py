"""The pure batch builder: read, scan and frame one chunk, without gRPC or processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.guest_memory import MemoryLayout, open_source_layout
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch
from livemig.sender.batch_builder import BatchBuilder, Chunk, TransferPlan

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


@given(st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES), st.integers(0, PAGES - 1), st.integers(1, 16))
def test_any_chunk_reassembles_to_the_source(tmp_path_factory, touched, first, count):
    directory = tmp_path_factory.mktemp("guest")
    contents = write_guest(directory / "guest.img", touched)
    layout = open_source_layout([(GPA, str(directory / "guest.img"))], PAGE)
    try:
        count = min(count, PAGES - first)
        chunk = Chunk(9, (MemoryRange(GPA + first * PAGE, count * PAGE),), zero_records=True)
        built = builder(layout, skip=True).build(chunk)
        rebuilt = bytearray(count * PAGE)  # what the destination holds after this batch
        if built.frame is not None:
            batch = decode_batch(built.frame)
            position = 0
            for gpa, length in batch.ranges.tolist():
                offset = gpa - GPA - first * PAGE
                rebuilt[offset : offset + length] = batch.data[position : position + length]
                position += length
        assert bytes(rebuilt) == contents[first * PAGE : (first + count) * PAGE]
        assert built.outcome.zero_bytes + built.outcome.transmitted_bytes == count * PAGE
    finally:
        layout.close()
