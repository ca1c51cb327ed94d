"""Both services' metrics endpoints tell the same truth as the migration's statistics."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from livemig.cli.images import make_image
from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import encode_batch
from tests.helpers import migrate, sender_stub, start_mid_transfer, watch

pytestmark = pytest.mark.e2e
MIB = 1 << 20


@pytest.fixture(scope="module")
def services(module_dir: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with (
        ServiceProcess("receiver", ["--memory-dir", str(module_dir / "dst"), "--metrics-port", "0"]) as receiver,
        ServiceProcess("sender", ["--metrics-port", "0"]) as sender,
    ):
        yield sender, receiver


def scrape(process: ServiceProcess) -> tuple[str, dict[tuple[str, tuple], float]]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def test_metrics_match_migration_statistics(services, shm_dir):
    sender, receiver = services
    image = shm_dir / "guest.img"
    make_image(image, 8 * MIB, 0.5)
    status = migrate(sender.address, receiver.address, [(0, image)], skip_zero_pages=True, connections=2)
    assert status.state == pb.COMPLETED, status.error
    stats = status.stats
    _, tx = scrape(sender)
    _, rx = scrape(receiver)
    assert tx[("livemig_sender_scanned_bytes_total", ())] == stats.scanned_bytes == 8 * MIB
    assert tx[("livemig_sender_zero_bytes_total", ())] == stats.zero_bytes
    assert tx[("livemig_sender_zero_pages_total", ())] == stats.zero_pages
    assert tx[("livemig_sender_normal_pages_total", ())] == stats.normal_pages
    assert tx[("livemig_sender_transmitted_bytes_total", ())] == stats.transmitted_bytes
    assert tx[("livemig_sender_wire_bytes_total", ())] == stats.wire_bytes
    assert tx[("livemig_sender_migrations_total", (("outcome", "completed"),))] == 1
    assert tx[("livemig_sender_active_migrations", ())] == 0
    assert tx[("livemig_sender_migration_throughput_bytes_per_second_sum", ())] == pytest.approx(
        stats.throughput_bytes_per_second, rel=0.01
    )
    assert tx[("livemig_sender_iterations_total", ())] == stats.iterations == 1
    assert tx[("livemig_sender_migration_duration_seconds_count", ())] == 1
    assert rx[("livemig_receiver_written_bytes_total", ())] == stats.transmitted_bytes
    assert rx[("livemig_receiver_batches_total", ())] == stats.batches
    assert rx[("livemig_receiver_sessions_total", (("outcome", "completed"),))] == 1
    assert rx[("livemig_receiver_destination_allocated_bytes", ())] >= stats.transmitted_bytes


def test_rejected_batches_are_counted_by_reason(services):
    import grpc

    _sender, receiver = services
    with grpc.insecure_channel(receiver.data_address) as channel:
        transfer = channel.stream_stream("/livemig.v1.Receiver/TransferPages", request_serializer=None)
        with pytest.raises(grpc.RpcError):
            list(transfer(iter([encode_batch("unknown", 1, [MemoryRange(0, 4)], [b"abcd"])])))
    _, rx = scrape(receiver)
    assert rx[("livemig_receiver_rejected_batches_total", (("reason", "unknown_session"),))] >= 1


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_is_clean(services):
    for process in services:
        text, _ = scrape(process)
        result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def per_migration_series(samples: dict, migration_id: str) -> list:
    return [key for key in samples if ("migration_id", migration_id) in key[1]]


@pytest.mark.parametrize("outcome", ["completed", "failed"])
def test_per_migration_gauges_are_removed_when_it_ends(services, shm_dir, outcome):
    sender, receiver = services
    image = shm_dir / "guest.img"
    make_image(image, 64 * MIB, 1.0)  # 1024 small batches: surely still running at the first scrape
    destination = receiver.address if outcome == "completed" else "127.0.0.1:1"
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = start_mid_transfer(stub, destination, image) if outcome == "completed" else None
        if migration_id is not None:
            _, during = scrape(sender)
            assert (("migration_id", migration_id),) in {key[1] for key in during}, (
                "no per-migration gauge while running"
            )
            status = watch(stub, migration_id)
        else:
            status = migrate(sender.address, destination, [(0, image)])
    assert pb.MigrationState.Name(status.state).lower() == outcome
    _, after = scrape(sender)
    assert per_migration_series(after, status.migration_id) == []
    assert after[("livemig_sender_active_migrations", ())] == 0


def test_live_migration_iterations_and_downtime_match_the_status(services, shm_dir):
    sender, receiver = services
    memory = shm_dir / "live.img"
    _, before = scrape(sender)
    with GuestProcess(memory, ["--size", "16M", "--rate", "2M"]) as guest:
        region = pb.GuestMemoryRegion(gpa=0, path=str(memory), dirty_log=f"{memory}.dirty")
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address, regions=[region], guest_pid=guest.pid, downtime_ms=2000
                )
            ).migration_id
            status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    _, after = scrape(sender)
    counted = after[("livemig_sender_iterations_total", ())] - before.get(("livemig_sender_iterations_total", ()), 0)
    assert counted == status.stats.iterations == len(status.iterations)
    downtimes = after[("livemig_sender_downtime_seconds_count", ())] - before.get(
        ("livemig_sender_downtime_seconds_count", ()), 0
    )
    assert downtimes == 1
    assert per_migration_series(after, migration_id) == []


def test_build_info_and_no_created_series(services):
    for process in services:
        text, samples = scrape(process)
        assert "_created" not in text
        (info,) = [key for key in samples if key[0] == "livemig_build_info"]
        assert dict(info[1])["version"] and samples[info] == 1


def test_metrics_address_binds_elsewhere_than_listen():
    with ServiceProcess("sender", ["--metrics-port", "0", "--metrics-address", "127.0.0.2"]) as sender:
        text = urllib.request.urlopen(f"http://127.0.0.2:{sender.metrics_port}/metrics", timeout=10).read().decode()
        assert "livemig_sender_wire_bytes_total" in text
        assert any("metrics on 127.0.0.2:" in line for line in sender.lines)
