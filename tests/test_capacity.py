"""How many migrations and connection processes the sender runs at once (sender/capacity.py)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import GuestProcess, ServiceProcess, process_tree
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.capacity import MIN_DEFAULT_CONNECTIONS, MigrationCapacity
from livemig.sender.errors import Reason, SenderError
from tests.helpers import migrate, sender_stub, wait_for
from tests.test_metrics import scrape


def refusal(capacity: MigrationCapacity, connections: int) -> str:
    with pytest.raises(SenderError) as raised:
        capacity.reserve(connections)
    assert raised.value.reason is Reason.BUSY
    return raised.value.message


def test_reservations_count_migrations_and_connections_and_come_back_once():
    capacity = MigrationCapacity(max_migrations=2, max_connections=10)
    first = capacity.reserve(6)
    assert "6 of 10 in use" in refusal(capacity, 5)  # 6 + 5 > 10
    second = capacity.reserve(4)
    assert "--max-migrations" in refusal(capacity, 1)
    first.release()
    first.release()  # once only: the second release gives nothing back twice
    assert capacity.in_use() == (1, 4)
    assert "--max-connections" in refusal(capacity, 11)  # never fits
    third = capacity.reserve(6)
    second.release()
    third.release()
    assert capacity.in_use() == (0, 0)


def test_concurrent_reservations_never_pass_the_limits():
    capacity = MigrationCapacity(max_migrations=1000, max_connections=64)
    taken: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(200):
            try:
                reservation = capacity.reserve(3)
            except SenderError:
                continue
            with lock:
                taken.append(capacity.in_use()[1])
            reservation.release()

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert taken and max(taken) <= 64
    assert capacity.in_use() == (0, 0)


def test_the_default_connection_limit_lets_one_request_of_the_most_connections_run():
    from livemig.cli.main import sender
    from livemig.sender.capacity import DEFAULT_MAX_MIGRATIONS
    from livemig.sender.requests import MAX_CONNECTIONS

    assert MigrationCapacity().max_connections >= MIN_DEFAULT_CONNECTIONS >= MAX_CONNECTIONS
    assert next(p.default for p in sender.params if p.name == "max_migrations") == DEFAULT_MAX_MIGRATIONS


def settled_tree_size(pid: int, timeout: float = 10.0) -> int:
    """The size of a process tree once it holds still (two looks 0.3 s apart agree): on a
    loaded machine a connection process of the running migration may still be starting."""
    deadline = time.monotonic() + timeout
    size = len(process_tree(pid))
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = len(process_tree(pid))
        if again == size:
            return size
        size = again
    return size


@pytest.mark.e2e
def test_starts_beyond_the_limits_are_refused_before_anything_is_opened(receiver, shm_dir: Path):
    guest = GuestProcess(shm_dir / "guest.img", ["--size-mib", "8", "--touch-ratio", "1", "--rate", "8"])
    region = pb.GuestMemoryRegion(gpa=0, path=str(guest.memory), dirty_log=str(guest.dirty_log))
    endless = pb.StartMigrationRequest(
        destination=receiver.address,
        regions=[region],
        connections=3,
        downtime_ms=1,
        available_bandwidth_bytes_per_second=1000,
        max_iterations=100_000,  # runs until cancelled
    )
    try:
        args = ["--max-migrations", "1", "--max-connections", "4", "--metrics-port", "0"]
        with ServiceProcess("sender", args) as tx:
            channel, stub = sender_stub(tx.address)
            with channel:
                migration_id = stub.StartMigration(endless, timeout=10).migration_id
                wait_for(stub, migration_id, lambda status: status.stats.iterations >= 1)
                fds = len(os.listdir(f"/proc/{tx.pid}/fd"))
                processes = settled_tree_size(tx.pid)
                for request, words in (
                    (pb.StartMigrationRequest(destination=receiver.address, regions=[region]), "--max-migrations"),
                    (pb.StartMigrationRequest(destination=receiver.address, regions=[region], connections=8), "8 conn"),
                ):
                    with pytest.raises(grpc.RpcError) as raised:
                        stub.StartMigration(request, timeout=10)
                    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert words in raised.value.details()
                assert len(os.listdir(f"/proc/{tx.pid}/fd")) == fds  # no guest file opened
                assert len(process_tree(tx.pid)) == processes  # no process started
                _, metrics = scrape(tx)
                assert metrics[("livemig_sender_connections_in_use", ())] == 3
                assert metrics[("livemig_sender_connections_limit", ())] == 4
                for limit in ("max_migrations", "max_connections"):
                    assert metrics[("livemig_sender_starts_refused_total", (("limit", limit),))] == 1
                cancelled = stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
                assert cancelled.state == pb.CANCELLED
                assert scrape(tx)[1][("livemig_sender_connections_in_use", ())] == 0
            # The cancelled migration gave its room back.
            image = shm_dir / "static.img"
            make_image(image, 4 << 20, 0.5)
            status = migrate(tx.address, receiver.address, [(0, image)], connections=4)
            assert status.state == pb.COMPLETED, status.error
    finally:
        guest.close()
