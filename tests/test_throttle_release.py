"""The auto-converge throttle is always released: the guest runs again however the
migration ends, and when the sender stops."""

from __future__ import annotations

import time

import pytest

from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import sender_stub, wait_for, watch

pytestmark = pytest.mark.e2e


def throttled_migration(stub, destination: str, guest: GuestProcess, **fields) -> str:
    """A live migration that believes the link carries 1 kB/s: auto-converge throttles at once."""
    migration_id = stub.StartMigration(
        pb.StartMigrationRequest(
            destination=destination,
            regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory), dirty_log=str(guest.dirty_log))],
            guest_pid=guest.pid,
            auto_converge=True,
            downtime_ms=1,
            available_bandwidth_bytes_per_second=1000,
            max_iterations=100_000,
            **fields,
        ),
        timeout=10,
    ).migration_id
    wait_for(stub, migration_id, lambda status: status.stats.throttle_percent >= 30, timeout=60)
    return migration_id


def never_stopped(guest: GuestProcess, seconds: float = 0.6) -> bool:
    """No SIGSTOP left behind: the guest is running at every look for a while (a duty cycle
    still going would show it stopped at some of them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if guest.stopped:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def guest(shm_dir):
    with GuestProcess(shm_dir / "guest.img", ["--size", "8M", "--rate", "4M"]) as running:
        yield running


def test_released_when_cancelled(sender, receiver, guest):
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = throttled_migration(stub, receiver.address, guest)
        status = stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
    assert status.state == pb.CANCELLED and status.stats.throttle_percent == 0
    assert never_stopped(guest)


def test_released_when_it_fails(sender, receiver, guest):
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = throttled_migration(stub, receiver.address, guest, timeout_ms=4000)
        status = watch(stub, migration_id)
    assert status.state == pb.FAILED and "did not converge" in status.error
    assert never_stopped(guest)


def test_released_when_the_sender_stops(receiver, guest, shm_dir):
    with ServiceProcess("sender", ["--state-dir", str(shm_dir / "state")]) as tx:
        channel, stub = sender_stub(tx.address)
        with channel:
            throttled_migration(stub, receiver.address, guest)
        assert tx.stop() == 0  # SIGTERM: migrations cancelled, throttles released
    assert never_stopped(guest)
