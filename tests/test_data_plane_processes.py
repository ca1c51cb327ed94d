"""The multi-process data plane under faults: real services, real processes, SIGKILL.

The sender runs one process per connection, the receiver serves page streams
from data-worker processes on ports of their own; what they share (batch ids
counted once, received-pages maps, stream liveness) must hold across processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from livemig.cli.images import make_image
from livemig.cli.processes import GuestProcess, ServiceProcess, children_of
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.transport import channel_options
from livemig.common.wire import encode_batch, encode_heartbeat
from tests.helpers import (
    SMALL_BATCH_BYTES,
    assert_destination_equals_source,
    migrate,
    receiver_stub,
    run_cli,
    sender_stub,
    start_guest,
    start_mid_transfer,
    wait_for_batches,
    watch,
)

pytestmark = pytest.mark.e2e
MIB = 1 << 20
PAGE = 4096
TRANSFER = "/livemig.v1.Receiver/TransferPages"


def fork_server_children(service_pid: int) -> list[int]:
    """Worker processes of a service: the children of its fork server."""
    for child in children_of(service_pid):
        with contextlib.suppress(OSError):
            if "forkserver" in Path(f"/proc/{child}/cmdline").read_text():
                return children_of(child)
    return []


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def prepare(stub, layout: list[MemoryRange]) -> pb.PrepareMigrationResponse:
    return stub.PrepareMigration(
        pb.PrepareMigrationRequest(
            layout=pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=r.gpa, length=r.length) for r in layout]),
            migration_id="processes",
        ),
        timeout=10,
    )


def send_raw(port: int, frames: list[bytes], metadata=()) -> list[pb.PageBatchAck]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=channel_options(8 * MIB)) as channel:
        transfer = channel.stream_stream(
            TRANSFER, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
        )
        return list(transfer(iter(frames), timeout=30, metadata=metadata))


@pytest.fixture(params=["pwrite", "mapped"])
def two_workers(shm_dir: Path, request) -> Iterator[ServiceProcess]:
    """Two data workers, writing with each of the receiver's write modes (--write-mode)."""
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2", "--write-mode", request.param]
    with ServiceProcess("receiver", args) as rx:
        assert len(rx.data_ports) == 2
        yield rx


def test_killed_sender_connection_process_is_restarted_and_resent(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 0.8, seed=3)
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = start_mid_transfer(stub, receiver.address, image, 20, connections=2, verify=True)
        connections = fork_server_children(sender.pid)
        assert len(connections) == 2, connections
        os.kill(connections[0], signal.SIGKILL)
        status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified  # totals (each batch id once) and digest matched
    assert_destination_equals_source(status, [(0, image)])
    assert "process died" in "".join(sender.lines)


def test_killed_connection_process_of_a_running_guest_completes_with_true_totals(sender, receiver, shm_dir):
    """The double fault: the receiver applied a batch, the connection process died before
    its acknowledgement, and the guest changed those pages (some now zero, some not) before
    the new process read them again. The second reading is a later attempt of the same
    batch id: the receiver writes it over the first and counts it instead of the first."""
    guest = GuestProcess(
        shm_dir / "guest.img",
        ["--size-mib", "16", "--touch-ratio", "1", "--rate", "64", "--threads", "2", "--zero-ratio", "0.5"],
    )
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address,
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory), dirty_log=str(guest.dirty_log))],
                    guest_pid=guest.pid,
                    connections=2,
                    skip_zero_pages=True,  # a page that turned zero changes a batch's size
                    max_batch_bytes=SMALL_BATCH_BYTES,
                    downtime_ms=100,
                    max_iterations=4,  # this guest writes too fast to converge: copy it paused then
                    timeout_strategy=pb.TIMEOUT_STRATEGY_FORCE,
                    verify=True,
                )
            ).migration_id
            wait_for_batches(stub, migration_id, 20)
            for connection in fork_server_children(sender.pid):
                os.kill(connection, signal.SIGKILL)
            status = watch(stub, migration_id)
        assert status.state == pb.COMPLETED, status.error
        assert status.live and status.stats.verified  # totals and digest matched
        assert_destination_equals_source(status, [(0, guest.memory)])
    finally:
        guest.close()
    assert "process died" in "".join(sender.lines)


def test_killed_receiver_data_worker_never_completes_with_wrong_memory(sender, two_workers, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 1.0, seed=5)
    guest = start_guest(image)  # stands in for a VMM (maps the image), paused for the copy
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = start_mid_transfer(
                stub, two_workers.address, image, 20, connections=2, verify=True, guest_pid=guest.pid
            )
            workers = fork_server_children(two_workers.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            status = watch(stub, migration_id)
        if status.state == pb.COMPLETED:  # reconnected to the restarted worker and resent
            assert status.stats.verified
            assert_destination_equals_source(status, [(0, image)])
            assert process_state(guest.pid) == "T"  # stays paused: the destination has it
        else:
            assert status.state == pb.FAILED
            assert process_state(guest.pid) != "T"  # resumed
    finally:
        guest.kill()
        guest.wait()
    assert "died" in "".join(two_workers.lines)
    # The restarted worker serves the next migration on the same port.
    assert len(fork_server_children(two_workers.pid)) == 2
    again = migrate(sender.address, two_workers.address, [(0, image)], connections=2, verify=True)
    assert again.state == pb.COMPLETED, again.error


def test_batch_resent_to_another_worker_is_counted_once(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        frame = encode_batch(session.session_token, 7, [MemoryRange(0, 4)], [b"abcd"])
        first, second = session.data_ports
        assert first != second
        assert send_raw(first, [frame])[0].bytes_written == 4
        assert send_raw(second, [frame])[0].bytes_written == 4  # the resend, served by the other worker
        with pytest.raises(grpc.RpcError) as raised:  # counted twice would be 2 batches, 8 bytes
            stub.CompleteMigration(
                pb.CompleteMigrationRequest(session_token=session.session_token, transmitted_bytes=8, batches=2),
                timeout=30,
            )
        assert raised.value.code() == grpc.StatusCode.DATA_LOSS
        # A fresh session: the same resend, then completion with the true totals.
        session = prepare(stub, [MemoryRange(0, MIB)])
        frame = encode_batch(session.session_token, 7, [MemoryRange(0, 4)], [b"abcd"])
        send_raw(session.data_ports[0], [frame])
        send_raw(session.data_ports[1], [frame])
        done = stub.CompleteMigration(
            pb.CompleteMigrationRequest(session_token=session.session_token, transmitted_bytes=4, batches=1),
            timeout=30,
        )
    assert done.written_bytes == 4
    assert Path(session.destination_regions[0].path).read_bytes()[:4] == b"abcd"


def test_a_later_attempt_through_another_worker_is_counted_in_place_of_the_first(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
        token = session.session_token
        first, second = session.data_ports
        assert send_raw(first, [encode_batch(token, 7, [MemoryRange(0, 8)], [b"abcdefgh"])])[0].bytes_written == 8
        # Read again after the sender's connection process died: other bytes, attempt 1.
        again = encode_batch(token, 7, [MemoryRange(0, 4)], [b"wxyz"], attempt=1)
        assert send_raw(second, [again])[0].bytes_written == 4
        done = stub.CompleteMigration(
            pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=4, batches=1), timeout=30
        )
    assert done.written_bytes == 4
    assert Path(session.destination_regions[0].path).read_bytes()[:8] == b"wxyzefgh"


def test_page_written_through_one_worker_and_zeroed_through_another_ends_zero(two_workers):
    channel, stub = receiver_stub(two_workers.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, 4 * PAGE)])
        token = session.session_token
        page = bytes([0xAB]) * PAGE
        send_raw(session.data_ports[0], [encode_batch(token, 1, [MemoryRange(PAGE, PAGE)], [page])])
        # A later iteration found the page zero: a zero record, through the other worker;
        # a zero record for a page never written must leave it unallocated.
        zero_frame = encode_batch(token, 2, [], [], [MemoryRange(PAGE, PAGE), MemoryRange(3 * PAGE, PAGE)])
        acks = send_raw(session.data_ports[1], [zero_frame])
        assert acks[0].batch_id == 2
        path = Path(session.destination_regions[0].path)
        assert path.read_bytes() == bytes(4 * PAGE)
        assert os.stat(path).st_blocks * 512 <= 2 * PAGE  # page 3 was never written, so not zeroed either
        done = stub.CompleteMigration(
            pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=PAGE, batches=2), timeout=30
        )
    assert done.written_bytes == PAGE


def _idle_stream(channel: grpc.Channel, release: threading.Event):
    def nothing() -> Iterator[bytes]:
        release.wait(60)
        return
        yield b""

    transfer = channel.stream_stream(
        TRANSFER, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
    )
    return transfer(nothing(), timeout=60)


def test_hundreds_of_idle_streams_neither_delay_control_nor_park(shm_dir):
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2", "--max-streams-per-worker", "100"]
    release = threading.Event()
    with ServiceProcess("receiver", args) as rx:
        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for port in rx.data_ports.values()]
        calls = [_idle_stream(channels[i % 2], release) for i in range(300)]
        try:
            deadline = time.monotonic() + 20
            refused = []
            while time.monotonic() < deadline:  # the 100 beyond the bound end at once, refused
                refused = [c for c in calls if not c.running() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
                if len(refused) >= 100:
                    break
                time.sleep(0.1)
            assert len(refused) == 100, f"{len(refused)} streams refused; expected the 100 beyond 2 x 100"
            assert sum(1 for c in calls if c.running()) == 200
            channel, stub = receiver_stub(rx.address)
            with channel:
                started = time.monotonic()
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                session = prepare(stub, [MemoryRange(0, MIB)])
                took = time.monotonic() - started
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert session.session_token
            print(f"\nhealth + prepare with 200 idle streams open and 100 refused: {took * 1000:.0f} ms")
            assert took < 2.0
        finally:
            release.set()
            for call in calls:
                call.cancel()
            for channel in channels:
                channel.close()


def test_open_stream_with_nothing_to_send_keeps_its_session(shm_dir):
    """The idle timeout measures the sender's silence, not the absence of data: a stream bound
    by its session metadata that sends heartbeats (the sender's "still here" while it scans
    all-zero memory) keeps the session; a bound stream that says nothing at all is closed
    after the idle timeout, its worker slot freed (issue 20: such streams held slots)."""
    with ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst"), "--idle-timeout", "0.5"]) as rx:
        channel, stub = receiver_stub(rx.address)
        with channel:
            session = prepare(stub, [MemoryRange(0, MIB)])
            token = session.session_token
            assert session.idle_timeout_ms == 500  # what the sender paces its heartbeats by
            frame = encode_batch(token, 1, [MemoryRange(0, 4)], [b"late"])

            def heartbeats_then_one_batch() -> Iterator[bytes]:
                for _ in range(20):  # four idle timeouts with nothing to send, saying so
                    time.sleep(0.1)
                    yield encode_heartbeat(token)
                yield frame

            def silent_then_one_batch() -> Iterator[bytes]:
                time.sleep(3.0)
                yield frame

            metadata = (("livemig-session", token),)
            with grpc.insecure_channel(f"127.0.0.1:{session.data_ports[0]}") as data:
                transfer = data.stream_stream(
                    TRANSFER, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
                )
                acks = list(transfer(heartbeats_then_one_batch(), timeout=30, metadata=metadata))
                assert [ack.batch_id for ack in acks] == [1] and acks[0].bytes_written == 4  # heartbeats: no ack
                with pytest.raises(grpc.RpcError) as closed:
                    list(transfer(silent_then_one_batch(), timeout=30, metadata=metadata))
                assert closed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "no batch, no heartbeat" in closed.value.details()
            stub.CompleteMigration(
                pb.CompleteMigrationRequest(session_token=token, transmitted_bytes=4, batches=1), timeout=30
            )
            # Without an open stream the same silence expires a session.
            lone = prepare(stub, [MemoryRange(0, MIB)])
            time.sleep(2.0)
            with pytest.raises(grpc.RpcError) as raised:
                send_raw(lone.data_ports[0], [encode_batch(lone.session_token, 1, [MemoryRange(0, 4)], [b"late"])])
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_stream_that_names_no_session_is_closed_after_the_idle_timeout(shm_dir):
    """Idle unauthenticated streams would hold a worker's slots for good: a stream without
    session metadata that sends nothing is closed after --idle-timeout; the slot comes back."""
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "1", "--idle-timeout", "0.5"]
    args += ["--max-streams-per-worker", "1"]
    release = threading.Event()
    with ServiceProcess("receiver", args) as rx:
        port = next(iter(rx.data_ports.values()))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            started = time.monotonic()
            silent = _idle_stream(channel, release)
            with pytest.raises(grpc.RpcError) as raised:
                list(silent)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "named no session" in raised.value.details()
            assert time.monotonic() - started < 30
        release.set()
        # The worker's only slot is free again: a real session's stream is served.
        channel, stub = receiver_stub(rx.address)
        with channel:
            session = prepare(stub, [MemoryRange(0, MIB)])
            frame = encode_batch(session.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])
            assert send_raw(session.data_ports[0], [frame])[0].bytes_written == 4


def test_long_all_zero_scan_does_not_expire_its_session(sender, shm_dir):
    image = shm_dir / "zeros.img"
    make_image(image, 1024 * MIB, 0.0, allocate=True)  # zeros the guest wrote: every page is read and scanned
    with ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst"), "--idle-timeout", "0.2"]) as rx:
        status = migrate(sender.address, rx.address, [(0, image)], skip_zero_pages=True, connections=1)
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.zero_bytes == 1024 * MIB and status.stats.batches == 0
    # The scan outlasted the idle timeout, so the session lived on its open stream alone.
    assert status.stats.transfer_ms > 200, status.stats


@pytest.mark.parametrize("connections", [2, 6])
def test_connection_processes_are_kept_for_the_next_migration(shm_dir, connections):
    """As many as the last migration used, also more than this host has cores."""
    image = shm_dir / "guest.img"
    make_image(image, 16 * MIB, 0.5, seed=9)
    with (
        ServiceProcess("sender", []) as tx,
        ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst")]) as rx,
    ):
        options = {"connections": connections, "skip_zero_pages": True, "verify": True}
        first = migrate(tx.address, rx.address, [(0, image)], **options)
        kept = sorted(fork_server_children(tx.pid))
        second = migrate(tx.address, rx.address, [(0, image)], **options)
        assert sorted(fork_server_children(tx.pid)) == kept  # the same processes served both
    assert first.state == second.state == pb.COMPLETED
    assert len(kept) == connections


def test_busy_data_port_is_one_line_at_start(shm_dir):
    """A data worker that cannot listen stops the receiver at start with one clear line."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        result = run_cli(
            "receiver",
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--memory-dir",
            str(shm_dir / "dst"),
            "--data-workers",
            "1",
            "--data-port",
            str(busy),
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "cannot start the data workers: data worker 0 cannot listen on 127.0.0.1" in output
    assert f"Failed to bind to address 127.0.0.1:{busy}" in output
