"""Settled batch ids: what a session remembers stays bounded, and the totals stay true.

PageBatch.settled_below tells the receiver which ids the sender will never send
again; receiver/batch_ids.py forgets them, receiver/ledger.py once every report
before the mark is in. Past --max-unsettled-batches a session is refused.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch, encode_batch
from livemig.receiver.batch_ids import PRUNE_FLOOR, BatchIds
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.ledger import SessionLedger
from livemig.receiver.session import Session
from tests.helpers import SMALL_BATCH_BYTES, assert_destination_equals_source, migrate, receiver_stub
from tests.local_data_plane import apply
from tests.test_data_plane_processes import prepare, send_raw

PAGE = 4096
MIB = 1 << 20


# -- BatchIds --------------------------------------------------------------------------


def test_a_sender_that_settles_as_it_goes_is_remembered_in_constant_space():
    ids: BatchIds[int] = BatchIds(limit=1000)
    window = 64
    most = 0
    for batch_id in range(1, 200_000):
        ids.settle(max(0, batch_id - window))
        assert ids.has_room_for(batch_id)
        ids.put(batch_id, 0)
        most = max(most, len(ids))
    assert most <= PRUNE_FLOOR + 1
    assert ids.get(199_999) == 0 and ids.is_settled(1) and not ids.is_settled(0)


def test_ids_above_the_mark_are_bounded_by_the_limit():
    ids: BatchIds[int] = BatchIds(limit=10)
    for batch_id in range(1, 11):
        assert ids.has_room_for(batch_id)
        ids.put(batch_id, 0)
    assert not ids.has_room_for(11)
    assert ids.has_room_for(10)  # already remembered: a resend has room
    ids.settle(6)  # five ids settled: forgotten as soon as room is needed
    assert ids.has_room_for(11) and len(ids) == 5
    ids.settle(3)  # a lower mark changes nothing
    assert ids.settled == 6


@given(st.lists(st.tuples(st.sampled_from(["put", "settle"]), st.integers(0, 50)), max_size=200))
def test_ids_at_or_above_the_mark_are_never_forgotten(operations):
    ids: BatchIds[int] = BatchIds(limit=10_000)
    model: dict[int, int] = {}
    for step, (operation, value) in enumerate(operations):
        if operation == "put":
            ids.put(value, step)
            model[value] = step
        else:
            ids.settle(value)
        for batch_id, stored in model.items():
            if batch_id >= ids.settled:
                assert ids.get(batch_id) == stored
            assert ids.is_settled(batch_id) == (0 < batch_id < ids.settled)


# -- the ledger --------------------------------------------------------------------------

# (batch id, attempt, written bytes): reports as data workers send them, in any order,
# repeated, and with later attempts.
reports = st.lists(st.tuples(st.integers(1, 30), st.integers(0, 2), st.integers(0, 1 << 20)), max_size=60)


@given(reports, st.data())
def test_settling_where_every_report_below_the_mark_is_in_keeps_the_totals(sequence, data):
    """The pool applies a mark once every report written before it is in: no report of an id
    below the mark comes after. Settled at any such point, the totals are those of a ledger
    that forgets nothing."""
    reference, ledger = SessionLedger(), SessionLedger()
    for index, (batch_id, attempt, written) in enumerate(sequence):
        reference.record_batch(batch_id, written, 0, attempt)
        ledger.record_batch(batch_id, written, 0, attempt)
        later = [b for b, _a, _w in sequence[index + 1 :]]
        safe_mark = min(later, default=31)  # no later report of an id below it
        ledger.settle(data.draw(st.integers(0, safe_mark), label="mark"))
    assert ledger.totals() == reference.totals()


def test_a_late_report_of_a_settled_id_is_not_counted_again():
    ledger = SessionLedger()
    assert ledger.record_batch(1, 100, 0).new_batch
    ledger.record_batch(2, 50, 0, settled_below=2)
    assert ledger.pending_mark() == 2
    ledger.settle(2)
    assert ledger.pending_mark() == 0
    late = ledger.record_batch(1, 60, 0, attempt=1)  # even a later attempt: the sender settled id 1
    assert not late.new_batch and late.written == 0
    assert ledger.totals() == (150, 2)


def test_a_ledger_at_a_quarter_of_its_limit_asks_for_a_round_and_a_round_empties_it():
    ledger = SessionLedger(64)
    for batch_id in range(1, 16):
        ledger.record_batch(batch_id, 4, 0, settled_below=batch_id)
        assert not ledger.wants_settling()
    ledger.record_batch(16, 4, 0, settled_below=16)
    assert ledger.wants_settling() and ledger.pending_mark() == 16
    ledger.settle(ledger.pending_mark())
    assert not ledger.wants_settling() and ledger.remembered_ids() == 1
    assert ledger.totals() == (64, 16)


def test_the_ledger_overflows_rather_than_grow_and_the_session_cannot_complete(shm_dir):
    session = new_session(shm_dir, limit=64)
    ledger = session.ledger
    for batch_id in range(1, 65):
        assert ledger.record_batch(batch_id, 4, 0).new_batch
    assert not ledger.overflowed
    assert not ledger.record_batch(65, 4, 0).new_batch
    assert ledger.overflowed and ledger.remembered_ids() == 64
    with pytest.raises(ReceiverError) as raised:
        session.complete(65 * 4, 65, b"")
    assert raised.value.reason is Reason.LIMIT


# -- a session's writes (one process) ----------------------------------------------------

IDS = itertools.count(1)


def new_session(directory: Path, limit: int = 1 << 18) -> Session:
    name = f"session-{next(IDS)}"
    layout = [MemoryRange(0, 16 * PAGE)]
    return Session.create(name, "token", "m", directory / name, layout, PAGE, 4 << 20, max_unsettled_batches=limit)


def batch(batch_id: int, page: int, fill: int, settled_below: int = 0):
    ranges, payload = [MemoryRange(page * PAGE, PAGE)], [bytes([fill]) * PAGE]
    return decode_batch(encode_batch("token", batch_id, ranges, payload, settled_below=settled_below))


def page_bytes(session: Session, page: int) -> bytes:
    return Path(session.destination_regions[0].path).read_bytes()[page * PAGE : (page + 1) * PAGE]


def test_a_late_copy_of_a_settled_batch_is_acknowledged_without_writing(shm_dir):
    """An old stream's leftover, applied after a later iteration wrote its pages again,
    would put old bytes over new ones."""
    session = new_session(shm_dir)
    apply(session, batch(1, page=3, fill=0xAA))
    apply(session, batch(9, page=3, fill=0xBB, settled_below=9))  # a later iteration: 1..8 settled
    assert apply(session, batch(1, page=3, fill=0xAA)) == (PAGE, 0)  # acknowledged as applied
    assert page_bytes(session, 3) == bytes([0xBB]) * PAGE
    assert session.ledger.totals() == (2 * PAGE, 2)
    session.complete(2 * PAGE, 2, b"")


def test_a_mark_above_the_batch_itself_is_malformed(shm_dir):
    session = new_session(shm_dir)
    with pytest.raises(ReceiverError) as raised:
        apply(session, batch(4, page=0, fill=1, settled_below=5))
    assert raised.value.reason is Reason.MALFORMED
    assert page_bytes(session, 0) == bytes(PAGE)


def test_a_session_that_never_settles_is_refused_at_the_limit(shm_dir):
    session = new_session(shm_dir, limit=64)
    for batch_id in range(1, 65):
        apply(session, batch(batch_id, page=batch_id % 16, fill=batch_id))
    with pytest.raises(ReceiverError) as raised:
        apply(session, batch(65, page=0, fill=65))
    assert raised.value.reason is Reason.LIMIT
    assert "--max-unsettled-batches" in raised.value.message


def test_a_session_that_settles_sends_far_more_batches_than_the_limit(shm_dir):
    session = new_session(shm_dir, limit=64)
    for batch_id in range(1, 5001):
        apply(session, batch(batch_id, page=batch_id % 16, fill=batch_id % 251, settled_below=max(0, batch_id - 8)))
    assert session.ledger.totals() == (5000 * PAGE, 5000)
    assert session.ledger.remembered_ids() <= 64
    session.complete(5000 * PAGE, 5000, b"")


# -- real services ------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_migration_of_many_times_the_limit_in_batches_completes(sender, shm_dir):
    """4096 batches through two data workers whose sessions may keep 1024 unsettled: only
    the sender's marks, forgotten by the workers and (after settle rounds) by the ledger,
    let it complete."""
    image = shm_dir / "guest.img"
    make_image(image, 256 * MIB, 1.0, seed=11)
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2", "--max-unsettled-batches", "1024"]
    with ServiceProcess("receiver", args) as rx:
        status = migrate(
            sender.address, rx.address, [(0, image)], connections=2, max_batch_bytes=SMALL_BATCH_BYTES, verify=True
        )
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.batches == 4096 and status.stats.verified
    assert_destination_equals_source(status, [(0, image)])


@pytest.mark.e2e
def test_a_client_that_never_settles_is_refused_at_the_limit(shm_dir):
    """The hostile case: tiny batches under fresh ids, the mark held at 0. The receiver
    remembers at most the limit and refuses the next one."""
    args = ["--memory-dir", str(shm_dir / "dst"), "--max-unsettled-batches", "64"]
    with ServiceProcess("receiver", args) as rx:
        channel, stub = receiver_stub(rx.address)
        with channel:
            session = prepare(stub, [MemoryRange(0, MIB)])
            token = session.session_token
            frames = [encode_batch(token, batch_id, [MemoryRange(0, 4)], [b"tiny"]) for batch_id in range(1, 66)]
            with pytest.raises(grpc.RpcError) as raised:
                send_raw(session.data_ports[0], frames)
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-unsettled-batches" in raised.value.details()
            # The same client settling as it goes is served however many batches it sends.
            session = prepare(stub, [MemoryRange(0, MIB)])
            token = session.session_token
            frames = [
                encode_batch(token, batch_id, [MemoryRange(0, 4)], [b"tiny"], settled_below=batch_id)
                for batch_id in range(1, 1001)
            ]
            assert len(send_raw(session.data_ports[0], frames)) == 1000
            done = stub.CompleteMigration(
                pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=4000, batches=1000), timeout=30
            )
            assert done.written_bytes == 4000
