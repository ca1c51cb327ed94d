"""The receiver's limits refuse cleanly, and a session nobody drives is dropped."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import encode_batch
from tests.helpers import migrate, receiver_stub, sender_stub, start_mid_transfer
from tests.test_bad_input import prepare, send_raw

pytestmark = pytest.mark.e2e
MIB = 1 << 20


@pytest.fixture
def limited(shm_dir: Path):
    args = [
        "--memory-dir",
        str(shm_dir / "dst"),
        "--max-sessions",
        "2",
        "--max-destination-bytes",
        str(40 * MIB),
        "--idle-timeout",
        "3",  # short, yet long enough for a loaded 2-core machine to start a sender's connections
    ]
    with ServiceProcess("receiver", args) as rx:
        yield rx, shm_dir / "dst"


def test_concurrent_session_limit(limited):
    rx, _ = limited
    channel, stub = receiver_stub(rx.address)
    small = [MemoryRange(0, MIB)]
    with channel:
        first, _second = prepare(stub, small), prepare(stub, small)
        with pytest.raises(grpc.RpcError) as raised:
            prepare(stub, small)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 2 concurrent migrations" in raised.value.details()
        stub.AbortMigration(pb.AbortMigrationRequest(session_token=first.session_token))
        prepare(stub, small)  # a slot is free again


def test_destination_budget(limited):
    rx, directory = limited
    channel, stub = receiver_stub(rx.address)
    with channel:
        prepare(stub, [MemoryRange(0, 30 * MIB)])
        with pytest.raises(grpc.RpcError) as raised:
            prepare(stub, [MemoryRange(0, 16 * MIB)])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in raised.value.details()
    assert len(list(directory.iterdir())) == 1  # the refused session left nothing behind


def test_idle_session_expires_and_later_batches_get_deadline_exceeded(limited):
    rx, directory = limited
    channel, stub = receiver_stub(rx.address)
    with channel:
        session = prepare(stub, [MemoryRange(0, MIB)])
    send_raw(rx.data_address, [encode_batch(session.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])])
    deadline = time.monotonic() + 10
    while any(directory.iterdir()):
        assert time.monotonic() < deadline, "idle session was not dropped"
        time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(rx.data_address, [encode_batch(session.session_token, 2, [MemoryRange(0, 4)], [b"abcd"])])
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "expired" in raised.value.details()
    assert "expired after 3 s" in "".join(rx.lines)


def test_sender_killed_mid_transfer_frees_the_receiver(limited, shm_dir):
    """The sender dies (SIGKILL) with streams open: TCP closes, the streams end, and
    the idle timeout drops the half-written destination."""
    rx, directory = limited
    image = shm_dir / "guest.img"
    make_image(image, 32 * MIB, 1.0)
    tx = ServiceProcess("sender", [])
    try:
        channel, stub = sender_stub(tx.address)
        with channel:
            migration_id = start_mid_transfer(stub, rx.address, image)
            assert stub.GetMigration(pb.MigrationRequest(migration_id=migration_id)).state == pb.RUNNING
    finally:
        tx.process.send_signal(signal.SIGKILL)
        tx.process.wait(10)
    killed = time.monotonic()
    while any(directory.iterdir()):
        assert time.monotonic() - killed < 15, "receiver kept the dead sender's session"
        time.sleep(0.1)
    print(f"\nsender killed: receiver dropped the session after {time.monotonic() - killed:.1f} s (idle timeout 3 s)")
    # The receiver still serves the next migration.
    with ServiceProcess("sender", []) as tx2:
        status = migrate(tx2.address, rx.address, [(0, image)], skip_zero_pages=True, verify=True)
    assert status.state == pb.COMPLETED, status.error
