"""One migration per guest: a second start on a running migration's guest is refused."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli.processes import GuestProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.claims import GuestClaims
from livemig.sender.errors import Reason, SenderError
from tests.helpers import sender_stub, wait_for


def test_overlapping_files_or_pid_are_refused_until_released():
    claims = GuestClaims()
    first = claims.claim("m1", [(1, 10), (1, 11)], pid=500)
    for files, pid in ([(1, 11)], 0), ([(2, 99)], 500):
        with pytest.raises(SenderError) as refused:
            claims.claim("m2", files, pid)
        assert refused.value.reason is Reason.GUEST and "m1" in refused.value.message
    other = claims.claim("m3", [(1, 12)], pid=501)  # another guest
    first.release()
    first.release()  # twice is once
    claims.claim("m2", [(1, 11)], pid=500)
    other.release()
    assert set(claims.running()) == {"m2"}


def test_racing_claims_admit_exactly_one():
    claims = GuestClaims()
    won: list[str] = []
    barrier = threading.Barrier(8)

    def race(name: str) -> None:
        barrier.wait()
        try:
            claims.claim(name, [(7, 7)])
            won.append(name)
        except SenderError:
            pass

    threads = [threading.Thread(target=race, args=(f"m{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1


@pytest.fixture
def guest(shm_dir: Path) -> Iterator[GuestProcess]:
    running = GuestProcess(shm_dir / "guest.img", ["--size-mib", "32", "--touch-ratio", "0.5", "--rate", "4"])
    yield running
    running.close()


def live_request(destination: str, guest: GuestProcess, path: Path | None = None, **fields) -> pb.StartMigrationRequest:
    region_path = str(path or guest.memory)
    return pb.StartMigrationRequest(
        destination=destination,
        regions=[pb.GuestMemoryRegion(gpa=0, path=region_path, dirty_log=region_path + ".dirty")],
        **fields,
    )


@pytest.mark.e2e
def test_a_second_migration_of_a_running_guest_is_refused_naming_the_first(sender, receiver, guest, shm_dir):
    """The operator's reproduction: a long live migration, then the same command again."""
    alias = shm_dir / "alias.img"
    os.link(guest.memory, alias)  # another path, the same file
    os.link(guest.dirty_log, str(alias) + ".dirty")
    channel, stub = sender_stub(sender.address)
    with channel:
        first = stub.StartMigration(
            live_request(
                receiver.address,
                guest,
                guest_pid=guest.pid,
                downtime_ms=1,
                available_bandwidth_bytes_per_second=1000,
                max_iterations=100_000,
                timeout_ms=60_000,
            ),
            timeout=10,
        ).migration_id
        wait_for(stub, first, lambda status: status.stats.iterations >= 1)
        for request in (
            live_request(receiver.address, guest),  # the same command again, default downtime
            live_request(receiver.address, guest, path=alias),  # the same files under other names
            pb.StartMigrationRequest(  # only the guest pid in common
                destination=receiver.address,
                regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory))],
                guest_pid=guest.pid,
            ),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                stub.StartMigration(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert first in refused.value.details()
        assert [m.migration_id for m in stub.ListMigrations(pb.ListMigrationsRequest()).migrations] == [first]
        stub.CancelMigration(pb.MigrationRequest(migration_id=first), timeout=60)
        # The first let go: the same guest may be migrated again.
        second = stub.StartMigration(live_request(receiver.address, guest, guest_pid=guest.pid), timeout=10)
        status = wait_for(stub, second.migration_id, lambda s: s.state in (pb.COMPLETED, pb.FAILED), timeout=120)
        assert status.state == pb.COMPLETED, status.error
