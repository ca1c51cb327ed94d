"""Receiver sessions without gRPC: writes, zero ranges and the received-pages map."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch, encode_batch
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.session import Session
from tests.local_data_plane import apply as apply_here

PAGE = 4096
WRITE_MODE = "pwrite"


@pytest.fixture(scope="module", params=["pwrite", "mapped"], autouse=True)
def write_mode(request):
    """Every test here runs against both ways of writing destination memory."""
    global WRITE_MODE
    WRITE_MODE = request.param
    yield request.param
    WRITE_MODE = "pwrite"


def new_session(directory: Path, layout: list[MemoryRange]) -> Session:
    return Session.create(
        "id", "token", "migration", directory / "session", layout, PAGE, 4 << 20, write_mode=WRITE_MODE
    )


BATCH_IDS = itertools.count(1)


def apply(
    session: Session, ranges, payload, zero_ranges=(), batch_id: int | None = None, attempt: int = 0
) -> tuple[int, int]:
    batch_id = next(BATCH_IDS) if batch_id is None else batch_id
    return apply_here(session, decode_batch(encode_batch("token", batch_id, ranges, payload, zero_ranges, attempt)))


def region_bytes(session: Session, index: int = 0) -> bytes:
    return Path(session.destination_regions[index].path).read_bytes()


def test_zero_ranges_zero_only_pages_received_before(shm_dir):
    session = new_session(shm_dir, [MemoryRange(0, 16 * PAGE)])
    apply(session, [MemoryRange(0, 2 * PAGE), MemoryRange(5 * PAGE + 10, 20)], [b"\x01" * (2 * PAGE), b"\x02" * 20])
    allocated_before = session.allocated_bytes()
    # The guest zeroed pages 1..7: pages 1 and 5 held data, the others never did.
    written, zeroed = apply(session, [], [], zero_ranges=[MemoryRange(PAGE, 7 * PAGE)])
    assert (written, zeroed) == (0, 2 * PAGE)  # pages 1 and 5 only
    memory = region_bytes(session)
    assert memory[:PAGE] == b"\x01" * PAGE
    assert not any(memory[PAGE:])
    assert session.allocated_bytes() == allocated_before  # untouched pages stay holes


def test_zero_range_and_data_in_one_batch_must_not_overlap(shm_dir):
    session = new_session(shm_dir, [MemoryRange(0, 4 * PAGE)])
    with pytest.raises(ReceiverError) as raised:
        apply(session, [MemoryRange(0, PAGE)], [b"\x01" * PAGE], zero_ranges=[MemoryRange(PAGE - 1, 2)])
    assert raised.value.reason is Reason.OVERLAP
    assert session.allocated_bytes() == 0


def test_zero_range_outside_layout_is_refused(shm_dir):
    session = new_session(shm_dir, [MemoryRange(0, 4 * PAGE)])
    with pytest.raises(ReceiverError) as raised:
        apply(session, [], [], zero_ranges=[MemoryRange(3 * PAGE, 2 * PAGE)])
    assert raised.value.reason is Reason.OUT_OF_RANGE


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.integers(0, 32 * PAGE - 1), st.integers(1, 3 * PAGE), st.booleans(), st.integers(1, 255)),
        min_size=1,
        max_size=12,
    )
)
def test_random_writes_and_zeroings_track_a_model(tmp_path_factory, operations):
    """Each operation is one batch; the destination always equals a plain bytearray model."""
    directory = tmp_path_factory.mktemp("session")
    size = 32 * PAGE
    session = new_session(directory, [MemoryRange(0, size)])
    model = bytearray(size)
    touched_pages = np.zeros(size // PAGE, dtype=bool)
    for offset, length, zero, value in operations:
        length = min(length, size - offset)
        if zero:
            apply(session, [], [], zero_ranges=[MemoryRange(offset, length)])
            model[offset : offset + length] = bytes(length)
        else:
            apply(session, [MemoryRange(offset, length)], [bytes([value]) * length])
            model[offset : offset + length] = bytes([value]) * length
            touched_pages[offset // PAGE : -(-(offset + length) // PAGE)] = True
    assert region_bytes(session) == bytes(model)
    # The received-pages map flags exactly the pages some batch wrote data into.
    assert np.array_equal(session.received_pages(0), touched_pages)
    session.abort()
    assert not (directory / "session").exists()


def test_abort_waits_for_nothing_and_forbids_more_writes(shm_dir):
    session = new_session(shm_dir, [MemoryRange(0, 4 * PAGE)])
    apply(session, [MemoryRange(0, 4)], [b"abcd"])
    session.abort()
    with pytest.raises(ReceiverError) as raised:
        apply(session, [MemoryRange(0, 4)], [b"abcd"])
    assert raised.value.reason is Reason.NOT_ACTIVE
    assert not os.path.exists(session.destination_regions[0].path)


def test_a_resent_batch_is_acknowledged_but_applied_and_counted_once(shm_dir):
    session = new_session(shm_dir, [MemoryRange(0, 4 * PAGE)])
    assert apply(session, [MemoryRange(0, 4)], [b"abcd"], batch_id=7) == (4, 0)
    # The same batch id again (the sender lost the acknowledgement and resent it).
    assert apply(session, [MemoryRange(0, 4)], [b"abcd"], batch_id=7) == (4, 0)
    assert (session.written_bytes, session.batches) == (4, 1)
    session.complete(transmitted_bytes=4, batches=1, digest=b"")


def test_a_later_attempt_is_written_over_the_earlier_and_counted_in_its_place(shm_dir):
    """Batch 7 read twice (the sender's connection process died before the first was
    acknowledged; the guest changed the pages meanwhile): the second reading wins, in
    memory and in the totals, and the first, arriving late, changes nothing."""
    session = new_session(shm_dir, [MemoryRange(0, 4 * PAGE)])
    first = bytes([1]) * (2 * PAGE)
    assert apply(session, [MemoryRange(0, 2 * PAGE)], [first], batch_id=7) == (2 * PAGE, 0)
    assert apply(session, [MemoryRange(PAGE, PAGE)], [b"\x02" * PAGE], batch_id=8) == (PAGE, 0)
    # Page 0 is now zero (left out), page 1 holds 3s.
    assert apply(session, [MemoryRange(PAGE, PAGE)], [b"\x03" * PAGE], batch_id=7, attempt=1) == (PAGE, 0)
    assert apply(session, [MemoryRange(0, 2 * PAGE)], [first], batch_id=7) == (2 * PAGE, 0)  # late: ignored
    assert region_bytes(session)[PAGE : 2 * PAGE] == b"\x03" * PAGE
    assert (session.written_bytes, session.batches) == (2 * PAGE, 2)
    # A third reading found it all zero: an empty batch, counted as nothing.
    assert apply(session, [], [], batch_id=7, attempt=2) == (0, 0)
    assert (session.written_bytes, session.batches) == (PAGE, 2)
    session.complete(transmitted_bytes=PAGE, batches=2, digest=b"")


@settings(max_examples=60)
@given(st.sets(st.integers(0, 63), min_size=1, max_size=30), st.integers(0, PAGE - 1), st.integers(1, PAGE))
def test_received_pages_are_flagged_for_few_and_many_ranges_alike(tmp_path_factory, starts, head, length):
    """A batch of one range or dozens (two ways to flag pages): exactly the pages touched."""
    directory = tmp_path_factory.mktemp("session")
    size = 66 * PAGE
    session = new_session(directory, [MemoryRange(0, size)])
    ranges = [MemoryRange(page * PAGE + head, length) for page in sorted(starts)]
    ranges = [r for r, nxt in zip(ranges, [*ranges[1:], None], strict=True) if nxt is None or r.end <= nxt.gpa]
    apply(session, ranges, [b"\x07" * r.length for r in ranges])
    expected = np.zeros(size // PAGE, dtype=bool)
    for r in ranges:
        expected[r.gpa // PAGE : -(-r.end // PAGE)] = True
    assert np.array_equal(session.received_pages(0), expected)
    session.abort()
