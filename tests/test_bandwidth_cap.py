"""The bandwidth cap holds for all connections together, costs zero pages nothing, and
can be changed while a migration runs (SetMigrationLimits, `livemig migrations set`)."""

from __future__ import annotations

import json
import time

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.bandwidth_cap import WireBudget
from tests.helpers import run_cli, sender_stub, wait_for, watch

MIB = 1 << 20


def test_the_budget_paces_reservations_and_gives_back_what_the_wire_did_not_take():
    budget = WireBudget(rate=MIB, burst=MIB)
    assert budget.delay(MIB) == 0  # the first chunk goes at once (the clock starts)
    budget.reserve(3 * MIB)
    assert 2.5 < budget.delay(MIB) <= 3.0  # 3 MiB reserved and 1 more asked, 1 MiB burst, at 1 MiB/s
    budget.settle(3 * MIB, 0)  # all zero pages: nothing went on the wire
    assert budget.delay() == 0
    budget.reserve(10 * MIB)
    budget.set_rate(0)  # lifted
    assert budget.delay() == 0


def start(stub, destination: str, image, **fields) -> str:
    return stub.StartMigration(
        pb.StartMigrationRequest(
            destination=destination, regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))], connections=2, **fields
        ),
        timeout=10,
    ).migration_id


@pytest.mark.e2e
def test_two_connections_together_stay_under_the_cap(sender, receiver, shm_dir):
    image = shm_dir / "dense.img"
    make_image(image, 48 * MIB, 1.0, seed=6)
    channel, stub = sender_stub(sender.address)
    with channel:
        status = watch(stub, start(stub, receiver.address, image, max_bandwidth_bytes_per_second=16 * MIB))
    assert status.state == pb.COMPLETED, status.error
    assert status.max_bandwidth_bytes_per_second == 16 * MIB
    # At most one chunk (8 MiB) ahead of 16 MiB/s: the last of 48 MiB goes out at 2.5 s.
    assert status.stats.transfer_ms >= 2400, status.stats
    assert status.stats.throughput_bytes_per_second <= 16 * MIB * 1.25


@pytest.mark.e2e
def test_zero_pages_cost_nothing_of_the_cap(sender, receiver, shm_dir):
    image = shm_dir / "sparse.img"
    make_image(image, 256 * MIB, 0.04, seed=6)  # ~10 MiB of data in 256 MiB
    channel, stub = sender_stub(sender.address)
    with channel:
        status = watch(
            stub, start(stub, receiver.address, image, skip_zero_pages=True, max_bandwidth_bytes_per_second=16 * MIB)
        )
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.duration_ms < 10_000  # the 256 MiB at 16 MiB/s would be 16 s


@pytest.mark.e2e
def test_limits_change_while_it_runs(sender, receiver, shm_dir):
    image = shm_dir / "dense.img"
    make_image(image, 64 * MIB, 1.0, seed=7)
    common = ["--sender", sender.address, "--insecure"]
    channel, stub = sender_stub(sender.address)
    with channel:
        started = time.monotonic()
        migration_id = start(stub, receiver.address, image, max_bandwidth_bytes_per_second=2 * MIB)  # 32 s
        wait_for(stub, migration_id, lambda status: status.stats.batches >= 1)
        lifted = run_cli("migrations", "set", migration_id, *common, "--max-bandwidth", "0", "--json")
        assert lifted.returncode == 0, lifted.stderr
        assert json.loads(lifted.stdout)["max_bandwidth_bytes_per_second"] == 0
        status = watch(stub, migration_id)
        assert status.state == pb.COMPLETED and time.monotonic() - started < 20  # not the capped 32 s
        # Refusals: nothing to change, a finished migration, an unknown one.
        assert run_cli("migrations", "set", migration_id, *common).returncode == 2
        with pytest.raises(grpc.RpcError) as finished:
            stub.SetMigrationLimits(pb.MigrationLimits(migration_id=migration_id, downtime_ms=5))
        assert finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as unknown:
            stub.SetMigrationLimits(pb.MigrationLimits(migration_id="0" * 32, downtime_ms=5))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.e2e
def test_a_new_downtime_target_is_used_at_once(sender, receiver, shm_dir):
    from livemig.cli.processes import GuestProcess

    with GuestProcess(shm_dir / "guest.img", ["--size", "16M", "--rate", "2M"]) as guest:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address,
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory), dirty_log=str(guest.dirty_log))],
                    guest_pid=guest.pid,
                    downtime_ms=1,  # never met
                    available_bandwidth_bytes_per_second=1000,
                    max_iterations=100_000,
                ),
                timeout=10,
            ).migration_id
            wait_for(stub, migration_id, lambda status: status.stats.iterations >= 2, timeout=60)
            with pytest.raises(grpc.RpcError) as invalid:  # refused whole: the old values stay
                stub.SetMigrationLimits(pb.MigrationLimits(migration_id=migration_id, downtime_ms=0, max_iterations=7))
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            kept = stub.GetMigration(pb.MigrationRequest(migration_id=migration_id))
            assert kept.downtime_limit_ms == 1 and kept.max_iterations == 100_000
            status = stub.SetMigrationLimits(
                pb.MigrationLimits(migration_id=migration_id, downtime_ms=3_600_000, max_iterations=50_000)
            )
            assert status.downtime_limit_ms == 3_600_000 and status.max_iterations == 50_000
            final = watch(stub, migration_id)  # an hour's downtime fits: switchover at the next decision
        assert final.state == pb.COMPLETED, final.error
