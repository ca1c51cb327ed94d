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
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import encode_batch
from tests.helpers import migrate

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
    assert tx[("livemig_sender_last_throughput_bytes_per_second", ())] == pytest.approx(
        stats.throughput_bytes_per_second, rel=0.01
    )
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
