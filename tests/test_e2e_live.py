"""Live pre-copy with a real running guest (`livemig memtouch`) between real processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import files_equal
from livemig.cli.processes import GuestProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import (
    SMALL_BATCH_BYTES,
    assert_destination_equals_source,
    sender_stub,
    wait_for,
    wait_for_batches,
    watch,
)

pytestmark = pytest.mark.e2e
MIB = 1 << 20
SUMMED = [
    "scanned_bytes",
    "zero_bytes",
    "zero_pages",
    "normal_pages",
    "transmitted_bytes",
    "wire_bytes",
    "zeroed_bytes",
]


class Guest(GuestProcess):
    @property
    def region(self) -> pb.GuestMemoryRegion:
        return pb.GuestMemoryRegion(gpa=0, path=str(self.memory), dirty_log=str(self.dirty_log))


@pytest.fixture
def guest(shm_dir: Path) -> Iterator[Guest]:
    running = Guest(
        shm_dir / "guest.img",
        ["--size-mib", "48", "--touch-ratio", "0.5", "--rate", "6", "--threads", "2", "--zero-ratio", "0.3"],
    )
    yield running
    running.close()


def start(sender_address: str, **fields) -> tuple[grpc.Channel, object, str]:
    channel, stub = sender_stub(sender_address)
    migration_id = stub.StartMigration(pb.StartMigrationRequest(**fields), timeout=10).migration_id
    return channel, stub, migration_id


def assert_iteration_invariants(status: pb.MigrationStatus, skip: bool) -> None:
    stats = status.stats
    assert stats.iterations == len(status.iterations)
    for name in SUMMED:
        assert getattr(stats, name) == sum(getattr(i, name) for i in status.iterations), name
    for iteration in status.iterations:
        if skip:
            assert iteration.scanned_bytes == iteration.zero_bytes + iteration.transmitted_bytes
            assert iteration.scanned_bytes == iteration.dirty_bytes
        else:
            assert iteration.transmitted_bytes == iteration.dirty_bytes and iteration.scanned_bytes == 0
        assert iteration.zero_pages + iteration.normal_pages == iteration.dirty_pages
    assert status.iterations[0].dirty_bytes == stats.total_bytes
    assert status.iterations[0].zeroed_bytes == 0  # the destination starts zeroed: nothing to undo


@pytest.mark.parametrize("skip", [True, False])
def test_running_guest_migrates_byte_exact(sender, receiver, guest, skip):
    channel, stub, migration_id = start(
        sender.address,
        destination=receiver.address,
        regions=[guest.region],
        guest_pid=guest.pid,
        connections=2,
        skip_zero_pages=skip,
        downtime_ms=100,
        verify=True,
    )
    with channel:
        status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    assert status.live and status.stats.verified
    assert guest.stopped  # the source stays paused after COMPLETED
    assert_destination_equals_source(status, [(0, guest.memory)])
    assert_iteration_invariants(status, skip)
    assert status.iterations[-1].final and status.stats.iterations >= 2
    if skip:
        assert status.stats.zeroed_bytes > 0  # pages the guest zeroed after they were sent
    assert status.stats.downtime_ms >= status.iterations[-1].duration_ms
    assert status.stats.bandwidth_source == "measured" and status.stats.bandwidth_bytes_per_second > 0
    assert status.convergence_forecast == ""  # a target within reach is not called out of reach


@pytest.mark.parametrize(
    ("strategy", "state"), [(pb.TIMEOUT_STRATEGY_CANCEL, pb.FAILED), (pb.TIMEOUT_STRATEGY_FORCE, pb.COMPLETED)]
)
def test_no_convergence_follows_the_timeout_strategy(sender, receiver, guest, module_dir, strategy, state):
    before = set((module_dir / "destination").iterdir())
    channel, stub, migration_id = start(
        sender.address,
        destination=receiver.address,
        regions=[guest.region],
        guest_pid=guest.pid,
        skip_zero_pages=True,
        downtime_ms=1,
        available_bandwidth_bytes_per_second=1000,  # a link far slower than the dirty rate
        max_iterations=3,
        timeout_strategy=strategy,
    )
    with channel:
        status = watch(stub, migration_id)
    assert status.state == state, status.error
    assert status.stats.bandwidth_source == "available"
    if state == pb.FAILED:
        assert "did not converge" in status.error
        assert status.stats.iterations == 3
        assert not guest.stopped  # resumed
        assert set((module_dir / "destination").iterdir()) == before  # destination aborted
    else:
        assert guest.stopped
        assert status.stats.expected_downtime_ms > 1  # forced past the target
        assert_destination_equals_source(status, [(0, guest.memory)])


def test_timeout_ms_ends_precopy(sender, receiver, guest):
    channel, stub, migration_id = start(
        sender.address,
        destination=receiver.address,
        regions=[guest.region],
        guest_pid=guest.pid,
        downtime_ms=1,
        available_bandwidth_bytes_per_second=1000,
        max_iterations=100_000,  # the most the sender accepts
        timeout_ms=1500,
    )
    started = time.monotonic()
    with channel:
        status = watch(stub, migration_id)
    assert status.state == pb.FAILED and "did not converge" in status.error
    assert time.monotonic() - started >= 1.5
    assert not guest.stopped


def test_cancel_during_precopy_resumes_guest(sender, receiver, guest):
    channel, stub, migration_id = start(
        sender.address,
        destination=receiver.address,
        regions=[guest.region],
        guest_pid=guest.pid,
        downtime_ms=1,
        available_bandwidth_bytes_per_second=1000,
        max_iterations=100_000,  # the most the sender accepts
    )
    with channel:
        wait_for(stub, migration_id, lambda status: status.stats.iterations >= 2)
        status = stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
    assert status.state == pb.CANCELLED
    assert not guest.stopped


def test_stop_and_copy_pauses_for_the_whole_copy(sender, receiver, guest):
    region = pb.GuestMemoryRegion(gpa=0, path=str(guest.memory))  # no dirty log: one pass
    channel, stub, migration_id = start(
        sender.address, destination=receiver.address, regions=[region], guest_pid=guest.pid, skip_zero_pages=True
    )
    with channel:
        status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    assert not status.live and guest.stopped
    assert status.stats.iterations == 1 and status.iterations[0].final
    assert status.stats.downtime_ms > 0
    by_gpa = {r.gpa: Path(r.path) for r in status.destination_regions}
    assert files_equal(guest.memory, by_gpa[0])


def test_live_request_errors(sender, receiver, guest, shm_dir):
    other, lonely = shm_dir / "other.img", shm_dir / "lonely.img"
    other.write_bytes(bytes(MIB))
    lonely.write_bytes(bytes(MIB))
    (shm_dir / "other.img.dirty").write_bytes(bytes(3))  # its map, of the wrong size
    cases = [
        ([guest.region, pb.GuestMemoryRegion(gpa=1 << 30, path=str(other))], 0, grpc.StatusCode.INVALID_ARGUMENT),
        (
            [pb.GuestMemoryRegion(gpa=0, path=str(other), dirty_log=f"{other}.dirty")],
            0,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            [pb.GuestMemoryRegion(gpa=0, path=str(lonely), dirty_log=f"{lonely}.dirty")],
            0,
            grpc.StatusCode.NOT_FOUND,
        ),
        ([guest.region], 2**31 - 1, grpc.StatusCode.FAILED_PRECONDITION),
    ]
    channel, stub = sender_stub(sender.address)
    with channel:
        for regions, pid, code in cases:
            with pytest.raises(grpc.RpcError) as raised:
                stub.StartMigration(
                    pb.StartMigrationRequest(destination=receiver.address, regions=regions, guest_pid=pid), timeout=10
                )
            assert raised.value.code() == code, raised.value.details()


def test_pause_and_resume_hooks_of_the_sender(receiver, shm_dir):
    """Without a guest pid the sender's configured hooks pause and resume the guest."""
    from livemig.cli.images import make_image
    from livemig.cli.processes import ServiceProcess

    log = shm_dir / "hooks.log"
    small, big = shm_dir / "small.img", shm_dir / "big.img"
    make_image(small, 2 * MIB, 0.5)
    make_image(big, 128 * MIB, 1.0)
    hook = "sh -c 'echo {} $LIVEMIG_MIGRATION_ID >> " + str(log) + "'"
    with ServiceProcess("sender", ["--pause-hook", hook.format("pause"), "--resume-hook", hook.format("resume")]) as tx:
        channel, stub, completed_id = start(
            tx.address, destination=receiver.address, regions=[pb.GuestMemoryRegion(gpa=0, path=str(small))]
        )
        with channel:
            assert watch(stub, completed_id).state == pb.COMPLETED
        channel, stub, cancelled_id = start(
            tx.address,
            destination=receiver.address,
            regions=[pb.GuestMemoryRegion(gpa=0, path=str(big))],
            max_batch_bytes=SMALL_BATCH_BYTES,
        )
        with channel:
            wait_for_batches(stub, cancelled_id)
            assert stub.CancelMigration(pb.MigrationRequest(migration_id=cancelled_id)).state == pb.CANCELLED
    assert log.read_text().splitlines() == [
        f"pause {completed_id}",  # completed: paused and left paused
        f"pause {cancelled_id}",
        f"resume {cancelled_id}",  # cancelled after the pause: resumed
    ]
