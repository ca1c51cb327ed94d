"""Migrations beside a client that prepares and aborts sessions as fast as it can (issue 20).

With sessions ending all the time (aborted by that client, or expiring), 6 of
30 real migrations failed: a prepare looked at the files of a session that was
ending. Every migration must complete, verified, whatever other sessions do.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from tests.helpers import assert_destination_equals_source, migrate, receiver_stub
from tests.test_data_plane_processes import prepare

pytestmark = pytest.mark.e2e
MIB = 1 << 20
MIGRATIONS = 30


def test_thirty_migrations_complete_beside_a_client_that_prepares_aborts_and_lets_expire(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.6, seed=20)
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2", "--max-sessions", "64"]
    with ServiceProcess("receiver", [*args, "--idle-timeout", "1"]) as rx:
        stop = threading.Event()
        churned = {"aborted": 0, "left_to_expire": 0}
        unexpected: list[str] = []

        def churn() -> None:
            channel, stub = receiver_stub(rx.address)
            with channel:
                for round_ in range(5000):  # bounded; stopped once the migrations are done
                    if stop.is_set():
                        return
                    try:
                        session = prepare(stub, [MemoryRange(0, MIB), MemoryRange(4 * MIB, MIB)])
                        if round_ % 8 == 0:
                            churned["left_to_expire"] += 1  # expires after the idle timeout
                            continue
                        stub.AbortMigration(pb.AbortMigrationRequest(session_token=session.session_token), timeout=10)
                        churned["aborted"] += 1
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:  # at --max-sessions: fine
                            unexpected.append(f"{error.code().name}: {error.details()}")
                        time.sleep(0.05)

        thread = threading.Thread(target=churn, daemon=True)
        thread.start()
        statuses = []
        try:
            for _ in range(MIGRATIONS):
                statuses.append(
                    migrate(sender.address, rx.address, [(0, image)], connections=2, skip_zero_pages=True, verify=True)
                )
        finally:
            stop.set()
            thread.join(30)
        output = "".join(rx.lines)
    failed = [s.error for s in statuses if s.state != pb.COMPLETED]
    assert not failed, failed[:3]
    assert all(s.stats.verified for s in statuses)
    assert_destination_equals_source(statuses[-1], [(0, image)])
    assert not unexpected, unexpected[:3]
    assert churned["aborted"] > MIGRATIONS and churned["left_to_expire"] > 0
    assert "expired" in output  # sessions did expire meanwhile
    assert str(shm_dir) not in "".join(unexpected)
    print(f"\n{MIGRATIONS} migrations completed beside {churned}")
