"""Helpers for tests that drive real livemig processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types
from pathlib import Path

import grpc

from livemig.cli.client import run_migration
from livemig.cli.images import files_equal
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc


def migrate(
    sender_address: str, receiver_address: str, regions: list[tuple[int, Path]], **options
) -> pb.MigrationStatus:
    request = pb.StartMigrationRequest(
        destination=receiver_address,
        regions=[pb.GuestMemoryRegion(gpa=gpa, path=str(path)) for gpa, path in regions],
        **options,
    )
    return run_migration(sender_address, request)


def assert_destination_equals_source(status: pb.MigrationStatus, regions: list[tuple[int, Path]]) -> None:
    by_gpa = {region.gpa: Path(region.path) for region in status.destination_regions}
    assert sorted(by_gpa) == sorted(gpa for gpa, _ in regions)
    for gpa, source in regions:
        assert files_equal(source, by_gpa[gpa]), f"destination region at {gpa:#x} differs from {source}"


def assert_stats_invariants(status: pb.MigrationStatus, skip_zero_pages: bool) -> None:
    stats = status.stats
    assert stats.transmitted_bytes + stats.zero_bytes == stats.total_bytes
    assert stats.processed_bytes == stats.total_bytes
    assert stats.scanned_bytes == (stats.total_bytes if skip_zero_pages else 0)
    if not skip_zero_pages:
        assert stats.zero_bytes == 0 and stats.zero_pages == 0
    assert stats.wire_bytes >= stats.transmitted_bytes
    if stats.transmitted_bytes:
        assert stats.batches > 0
        assert stats.throughput_bytes_per_second > 0
        # Throughput is wire bytes over transfer time, never inflated by skipped bytes.
        transfer_seconds = stats.transfer_ms / 1000
        if transfer_seconds > 0.05:
            assert stats.throughput_bytes_per_second <= 1.5 * stats.wire_bytes / transfer_seconds


def receiver_stub(address: str) -> tuple[grpc.Channel, pb_grpc.ReceiverStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.ReceiverStub(channel)


def sender_stub(address: str) -> tuple[grpc.Channel, pb_grpc.SenderStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.SenderStub(channel)


def wait_for(stub: pb_grpc.SenderStub, migration_id: str, ready, timeout: float = 30) -> pb.MigrationStatus:
    """Poll GetMigration until ready(status) holds (e.g. batches are flowing)."""
    deadline = time.monotonic() + timeout
    while not ready(status := stub.GetMigration(pb.MigrationRequest(migration_id=migration_id))):
        assert time.monotonic() < deadline, f"migration never reached the awaited point: {status}"
        time.sleep(0.005)
    return status


def wait_for_batches(stub: pb_grpc.SenderStub, migration_id: str, count: int = 1) -> pb.MigrationStatus:
    return wait_for(stub, migration_id, lambda status: status.stats.batches >= count)


def watch(stub: pb_grpc.SenderStub, migration_id: str) -> pb.MigrationStatus:
    """The final status, from WatchMigration."""
    return list(stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id), timeout=120))[-1]


def run_cli(
    *args: str, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livemig.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**os.environ, **env} if env is not None else None,
    )


SMALL_BATCH_BYTES = 64 * 1024  # the smallest batch the sender accepts: many round trips per MiB


def start_mid_transfer(stub: pb_grpc.SenderStub, destination: str, image: Path, batches: int = 1, **fields) -> str:
    """Start a one-region migration in small batches and return once `batches` are out:
    the moment a fault test breaks something, with the migration surely still running."""
    migration_id = stub.StartMigration(
        pb.StartMigrationRequest(
            destination=destination,
            regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
            max_batch_bytes=SMALL_BATCH_BYTES,
            **fields,
        )
    ).migration_id
    wait_for_batches(stub, migration_id, batches)
    return migration_id


_GUEST = """
import mmap, sys, time
with open(sys.argv[1], "rb") as memory:
    mapped = mmap.mmap(memory.fileno(), 0, prot=mmap.PROT_READ)
print("mapped", flush=True)
time.sleep(600)
"""


def start_guest(memory: Path) -> subprocess.Popen:
    """A process standing in for a VMM: it maps the guest memory file (so the sender
    accepts its pid as the guest's) and sleeps until killed. Returns once it is mapped."""
    guest = subprocess.Popen([sys.executable, "-c", _GUEST, str(memory)], stdout=subprocess.PIPE, text=True)
    assert guest.stdout is not None and guest.stdout.readline().strip() == "mapped"
    return guest


# ConnectionStream stand-ins (tests/test_stream_watchdog.py, tests/test_connection_attempts.py).
# Nothing is built in those tests (frames are put in flight by hand): a builder without compression.
NO_BUILDER = types.SimpleNamespace(compressor=None)


class Broken(grpc.RpcError):
    """What gRPC raises for a stream whose connection broke."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "connection reset"
