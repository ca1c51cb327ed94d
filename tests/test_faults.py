"""Faults on purpose: broken connections, dead peers, cancels. Real processes throughout."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import (
    assert_destination_equals_source,
    sender_stub,
    start_guest,
    start_mid_transfer,
    watch,
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.e2e
MIB = 1 << 20


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_one_broken_connection_is_reconnected_and_resent(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 96 * MIB, 0.7, seed=11)
    # Every port of the receiver (API and data workers) through a proxy on 127.0.0.2.
    proxy = TcpProxy(receiver.port, also=list(receiver.data_ports.values()), mirror_host="127.0.0.2")
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = start_mid_transfer(
                stub, proxy.address, image, 50, connections=2, skip_zero_pages=True, verify=True
            )
            proxy.reset(proxy.busiest())  # one TCP connection dies mid-transfer
            status = watch(stub, migration_id)
    finally:
        proxy.close()
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified  # the receiver's totals and digest matched: nothing lost, nothing twice
    assert_destination_equals_source(status, [(0, image)])
    assert "reconnecting" in "".join(sender.lines)


def test_receiver_killed_mid_transfer_fails_in_bounded_time(sender, shm_dir):
    """The receiver dies mid-copy: FAILED within seconds, the guest resumed, source memory untouched."""
    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 1.0)
    before = file_hash(image)
    guest = start_guest(image)  # stands in for a VMM: paused for the copy
    rx = ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst")])
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = start_mid_transfer(stub, rx.address, image, 10, guest_pid=guest.pid)
            assert process_state(guest.pid) == "T"  # paused for the stop-and-copy
            rx.process.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            status = watch(stub, migration_id)
            failed_after = time.monotonic() - killed
        assert process_state(guest.pid) != "T"  # resumed
    finally:
        rx.stop()
        guest.kill()
        guest.wait()
    print(f"\nreceiver killed: migration FAILED after {failed_after:.1f} s")
    assert status.state == pb.FAILED
    assert "unavailable" in status.error
    assert failed_after < 15, f"took {failed_after:.1f} s to notice the dead receiver"
    assert file_hash(image) == before  # source memory untouched


def test_cancel_while_preparing_on_an_unresponsive_receiver(sender, shm_dir):
    """A receiver that accepts TCP but never answers: cancel still ends the migration at once."""
    import socket

    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=f"127.0.0.1:{silent.getsockname()[1]}",
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
                )
            ).migration_id
            time.sleep(0.3)
            assert stub.GetMigration(pb.MigrationRequest(migration_id=migration_id)).phase == "setup"
            started = time.monotonic()
            status = stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=30)
            assert status.state == pb.CANCELLED
            assert time.monotonic() - started < 10  # far below the 15 s control timeout it rules out
    finally:
        silent.close()


def test_sigterm_to_receiver_during_a_migration_ends_it_cleanly(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 1.0)
    guest = start_guest(image)
    rx = ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst")])
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = start_mid_transfer(stub, rx.address, image, 10, guest_pid=guest.pid)
            rx.process.send_signal(signal.SIGTERM)
            status = watch(stub, migration_id)
            assert rx.process.wait(30) == 0
        assert status.state == pb.FAILED, status.error
        assert process_state(guest.pid) != "T"  # resumed
        assert not any((shm_dir / "dst").iterdir())  # the half-written destination was dropped
        assert "aborted: receiver shutting down" in "".join(rx.lines)
    finally:
        rx.stop()
        guest.kill()
        guest.wait()


def test_guest_memory_file_shrinking_mid_transfer_fails_the_migration(sender, receiver, shm_dir):
    """A source file truncated under the sender: FAILED with the reason, not a retry loop or a cancel."""
    import os

    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 1.0)
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = start_mid_transfer(stub, receiver.address, image, 10)
        os.truncate(image, MIB)
        status = watch(stub, migration_id)
    assert status.state == pb.FAILED
    assert "short read" in status.error
