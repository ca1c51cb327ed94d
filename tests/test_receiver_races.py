"""The receiver's control process under sessions that end while others begin (issue 20).

A prepare counts the space promised to sessions in flight by looking at their
destination files; a session aborted or expired meanwhile has just removed them.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import encode_batch
from livemig.receiver.errors import ReceiverError
from livemig.receiver.limits import ReceiverLimits
from livemig.receiver.registry import SessionRegistry
from tests.helpers import receiver_stub
from tests.test_data_plane_processes import TRANSFER, prepare, send_raw

MIB = 1 << 20


def test_prepare_counts_a_session_whose_files_just_went_as_ending(shm_dir: Path):
    """The window of the race, held open: a session still listed active whose files an
    abort has removed. Before the fix this prepare failed with ENOENT and the path."""
    registry = SessionRegistry(shm_dir, ReceiverLimits(idle_timeout_seconds=3600))
    try:
        ending = registry.prepare([MemoryRange(0, MIB)], 4096, "ending")
        shutil.rmtree(ending.directory)  # what Session.abort does, before the state is seen
        fresh = registry.prepare([MemoryRange(0, MIB)], 4096, "fresh")
        assert fresh.active
    finally:
        registry.close()
        registry.remove_state()  # its private folder on /dev/shm (the service does this at shutdown)


def test_prepares_beside_a_client_that_prepares_and_aborts_never_fail(shm_dir: Path):
    registry = SessionRegistry(shm_dir, ReceiverLimits(idle_timeout_seconds=3600, max_sessions=64))
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        while not stop.is_set() and churned[0] < 2000:
            # Many regions: a prepare spends longer looking at this session's files.
            session = registry.prepare([MemoryRange(i * MIB, 4096) for i in range(64)], 4096, "churn")
            registry.abort(session)
            churned[0] += 1

    thread = threading.Thread(target=churn)
    thread.start()
    failures: list[str] = []
    try:
        for _ in range(150):
            try:
                session = registry.prepare([MemoryRange(0, MIB)], 4096, "steady")
            except ReceiverError as error:
                failures.append(error.message)
                continue
            registry.abort(session)
    finally:
        stop.set()
        thread.join(30)
        registry.close()
        registry.remove_state()  # its private folder on /dev/shm (the service does this at shutdown)
    assert churned[0] > 0
    assert not failures, failures[:3]
    assert not any(str(shm_dir) in failure for failure in failures)


def test_storage_errors_name_no_host_path():
    import errno

    from livemig.receiver.errors import storage_error

    error = storage_error(OSError(errno.ENOENT, "No such file or directory", "/srv/secret/region-0.mem"), "opening")
    assert "/srv/secret" not in error.message and "No such file" in error.message


@pytest.mark.e2e
def test_streams_bound_to_an_aborted_session_end_and_free_their_slots(shm_dir: Path):
    """Idle streams bound to a session kept their worker's slots after its abort: every new
    session's streams were refused RESOURCE_EXHAUSTED."""
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "1", "--max-streams-per-worker", "4"]
    release = threading.Event()
    with ServiceProcess("receiver", [*args, "--idle-timeout", "30"]) as rx:
        channel, stub = receiver_stub(rx.address)
        with channel, grpc.insecure_channel(f"127.0.0.1:{rx.data_ports[0]}") as data:
            session = prepare(stub, [MemoryRange(0, MIB)])
            token = session.session_token
            transfer = data.stream_stream(
                TRANSFER, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
            )

            def nothing() -> Iterator[bytes]:
                release.wait(60)
                return
                yield b""

            streams = [transfer(nothing(), timeout=60, metadata=(("livemig-session", token),)) for _ in range(4)]
            try:
                deadline = time.monotonic() + 20
                while not all(s.running() for s in streams) and time.monotonic() < deadline:
                    time.sleep(0.05)
                stub.AbortMigration(pb.AbortMigrationRequest(session_token=token), timeout=10)
                for stream in streams:
                    with pytest.raises(grpc.RpcError) as raised:
                        list(stream)  # ends by itself: nothing released the client side
                    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                    assert "aborted" in raised.value.details()
                fresh = prepare(stub, [MemoryRange(0, MIB)])
                frame = encode_batch(fresh.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])
                assert send_raw(fresh.data_ports[0], [frame])[0].bytes_written == 4
            finally:
                release.set()


@pytest.mark.e2e
def test_after_a_refused_completion_the_workers_hold_the_session_active_as_the_control_process(receiver):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        token = session.session_token
        port = session.data_ports[0]
        send_raw(port, [encode_batch(token, 1, [MemoryRange(0, 4)], [b"abcd"])])
        with pytest.raises(grpc.RpcError) as raised:
            stub.CompleteMigration(
                pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=99, batches=1), timeout=30
            )
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS
        # Still active everywhere: a worker takes the next batch (it said "completed" before).
        assert send_raw(port, [encode_batch(token, 2, [MemoryRange(4, 4)], [b"efgh"])])[0].bytes_written == 4
        done = stub.CompleteMigration(
            pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=8, batches=2), timeout=30
        )
    assert done.written_bytes == 8
    assert Path(session.destination_regions[0].path).read_bytes()[:8] == b"abcdefgh"
