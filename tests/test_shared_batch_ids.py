"""Attempts and settled ids hold per session, across data workers (issue 20, defects 3 and 4).

"A lower attempt or a settled id never overwrites newer bytes" held per worker
only: the same batch id through another worker wrote older bytes, and completion
still said OK. A settled mark of 2^64-1 made every later batch acknowledged
without being written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch, encode_batch
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.session import Session
from livemig.receiver.shared_batch_ids import HEADER_BYTES, PID_BITS, SLOT, SharedBatchIds, Verdict, create_table
from livemig.receiver.writer import SessionWriter
from tests.helpers import receiver_stub
from tests.local_data_plane import apply
from tests.test_data_plane_processes import prepare, send_raw

MIB = 1 << 20
PAGE = 4096
U64_MAX = (1 << 64) - 1


@pytest.fixture(scope="module", params=["pwrite", "mapped"])
def two_workers(module_dir: Path, request) -> Iterator[ServiceProcess]:
    args = ["--memory-dir", str(module_dir / f"dst-{request.param}"), "--data-workers", "2"]
    with ServiceProcess("receiver", [*args, "--write-mode", request.param]) as rx:
        assert len(rx.data_ports) == 2
        yield rx


def complete(stub, token: str, transmitted: int, batches: int) -> pb.CompleteMigrationResponse:
    return stub.CompleteMigration(
        pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=transmitted, batches=batches), timeout=30
    )


@pytest.mark.e2e
def test_an_earlier_attempt_through_another_worker_never_overwrites_a_later_one(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        token = session.session_token
        first, second = session.data_ports
        later = encode_batch(token, 5, [MemoryRange(0, PAGE)], [b"\x02" * PAGE], attempt=1)
        earlier = encode_batch(token, 5, [MemoryRange(0, PAGE)], [b"\x01" * PAGE], attempt=0)
        assert send_raw(first, [later])[0].bytes_written == PAGE
        assert send_raw(second, [earlier])[0].bytes_written == PAGE  # acknowledged, not written
        assert Path(session.destination_regions[0].path).read_bytes()[:PAGE] == b"\x02" * PAGE
        complete(stub, token, PAGE, 1)


@pytest.mark.e2e
def test_a_settled_id_through_another_worker_is_not_written(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        token = session.session_token
        first, second = session.data_ports
        old = encode_batch(token, 1, [MemoryRange(0, PAGE)], [b"\x01" * PAGE])
        new = encode_batch(token, 2, [MemoryRange(0, PAGE)], [b"\x02" * PAGE], settled_below=2)
        send_raw(first, [old, new])  # id 2 settles id 1
        send_raw(second, [old])  # an old stream's leftover, through the other worker
        assert Path(session.destination_regions[0].path).read_bytes()[:PAGE] == b"\x02" * PAGE
        complete(stub, token, 2 * PAGE, 2)


@pytest.mark.e2e
def test_a_mark_far_beyond_the_window_is_refused_at_once_and_later_batches_land(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        token = session.session_token
        hostile = encode_batch(token, U64_MAX, [MemoryRange(0, 4)], [b"evil"], settled_below=U64_MAX)
        with pytest.raises(grpc.RpcError) as raised:
            send_raw(session.data_ports[0], [hostile])
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-unsettled-batches" in raised.value.details()
        for port in session.data_ports:  # nothing was settled: a later batch is written, wherever it lands
            send_raw(port, [encode_batch(token, 1, [MemoryRange(PAGE, 4)], [b"good"])])
        assert Path(session.destination_regions[0].path).read_bytes()[PAGE : PAGE + 4] == b"good"
        complete(stub, token, 4, 1)


# -- one process, two writers: what the workers share ------------------------------------


def new_session(directory: Path, limit: int = 1 << 18) -> Session:
    return Session.create(
        "s", "token", "m", directory / "s", [MemoryRange(0, 16 * PAGE)], PAGE, 4 << 20, max_unsettled_batches=limit
    )


def batch(batch_id: int, fill: int, attempt: int = 0, settled_below: int = 0):
    frame = encode_batch(
        "token", batch_id, [MemoryRange(0, PAGE)], [bytes([fill]) * PAGE], attempt=attempt, settled_below=settled_below
    )
    return decode_batch(frame)


def test_two_writers_of_one_session_share_attempts_and_the_mark(shm_dir: Path):
    session = new_session(shm_dir)
    worker_0, worker_1 = SessionWriter(session.record), SessionWriter(session.record)
    assert worker_0.apply(batch(5, 0xB1, attempt=1))[2]
    assert not worker_1.apply(batch(5, 0xB0, attempt=0))[2]
    assert worker_1.apply(batch(6, 0xC0, settled_below=6))[2]
    assert not worker_0.apply(batch(5, 0xB2, attempt=2))[2]  # settled through the other writer
    assert Path(session.destination_regions[0].path).read_bytes()[:PAGE] == bytes([0xC0]) * PAGE


def test_the_window_is_counted_from_the_mark_before_the_batch(shm_dir: Path):
    session = new_session(shm_dir, limit=64)
    with pytest.raises(ReceiverError) as raised:
        apply(session, batch(U64_MAX, 1, settled_below=U64_MAX))
    assert raised.value.reason is Reason.LIMIT
    with pytest.raises(ReceiverError):
        apply(session, batch(65, 1, settled_below=65))  # 1 + 64: one beyond
    apply(session, batch(64, 1, settled_below=60))
    apply(session, batch(123, 2))  # 60 + 64 - 1: the last id of the window


def test_a_claim_left_by_a_dead_process_is_taken_over(shm_dir: Path):
    path = shm_dir / "ids.table"
    create_table(path, 16)
    ids = SharedBatchIds(path, 16)
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    ids._map[HEADER_BYTES + 3 * SLOT.size : HEADER_BYTES + 4 * SLOT.size] = SLOT.pack(3, 0, child & PID_BITS)
    assert ids.claim(3, 0, 0, lambda: None) is Verdict.WRITE  # not waited for forever
    ids.release(3, 0, written=True)
    assert ids.claim(3, 0, 0, lambda: None) is Verdict.SKIP
    ids.close()
