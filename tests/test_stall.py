"""A pre-copy that makes no progress ends by its strategy (the stall timeout), and a long
pre-copy stays readable: iteration logs at most once a second, the status bounded."""

from __future__ import annotations

import re
import time

import pytest

from livemig.cli.processes import GuestProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import sender_stub, watch

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(
    ("strategy", "state"), [(pb.TIMEOUT_STRATEGY_CANCEL, pb.FAILED), (pb.TIMEOUT_STRATEGY_FORCE, pb.COMPLETED)]
)
def test_a_stalled_precopy_ends_by_its_strategy(sender, receiver, shm_dir, strategy, state):
    with GuestProcess(shm_dir / "guest.img", ["--size", "16M", "--rate", "8M", "--zero-ratio", "0.2"]) as guest:
        channel, stub = sender_stub(sender.address)
        with channel:
            started = time.monotonic()
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address,
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory), dirty_log=str(guest.dirty_log))],
                    guest_pid=guest.pid,
                    downtime_ms=1,  # never met: only the stall can end pre-copy
                    available_bandwidth_bytes_per_second=1000,
                    max_iterations=100_000,
                    timeout_ms=120_000,
                    stall_timeout_ms=1000,
                    timeout_strategy=strategy,
                ),
                timeout=10,
            ).migration_id
            status = watch(stub, migration_id)
            took = time.monotonic() - started
        assert status.state == state, status.error
        assert took < 60  # the stall ended it, long before the 120 s timeout
        if state == pb.FAILED:
            assert "stalled: no new low of dirty bytes for 1000 ms" in status.error
            assert not guest.stopped
        assert len(status.iterations) <= 64 < status.stats.iterations or status.stats.iterations <= 64
        logged = [line for line in sender.lines if migration_id in line and re.search(r"iteration \d+ sent", line)]
        assert len(logged) <= took + 3  # at most one a second (and the last)
        if status.stats.iterations > took + 3:
            assert any(migration_id in line and "not logged" in line for line in sender.lines)
