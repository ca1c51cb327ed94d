"""Every panel of the Grafana dashboard has data in a real Prometheus scraping a real migration."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import encode_batch
from tests.helpers import sender_stub

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "livemig.json"
PROMETHEUS = shutil.which("prometheus")
SCRAPE_SECONDS = 0.5
# Grafana's variables, as it would expand them for a short range at this scrape interval.
VARIABLES = {"$__rate_interval": "3s", "$__range": "10m", "$__interval": "1s", "$instance": ".*"}
# Panels whose every query must have moved, not merely exist, during the migration.
MUST_MOVE = {"Wire throughput", "Skipped vs transmitted", "Receiver writes", "Wire throughput per connection"}

if PROMETHEUS is None and os.environ.get("CI"):
    pytest.fail("prometheus (Debian package) is missing in CI: ./dev test installs it", pytrace=False)
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_dashboard_shape():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "livemig-overview"
    # Imports into any Grafana: the Prometheus is a variable, not the provisioned uid.
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["includeAll"] and "instance" in variables["instance"]["definition"]
    uid = "${datasource}"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        unit = panel["fieldConfig"]["defaults"].get("unit", "")
        assert unit not in ("Bps", "decbytes", "MBs"), f"{panel['title']}: SI units; binary (binBps, bytes) everywhere"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
            if panel["type"] == "stat":
                assert target.get("instant") is True, f"{panel['title']}: stat panels show an instant value"
            # rate()/increase() are applied to raw counters, before any aggregation.
            for function in ("rate(", "increase("):
                for part in target["expr"].split(function)[1:]:
                    assert not part.startswith(("sum", "max", "min", "avg")), target["expr"]
            if "rate(" in target["expr"]:
                assert "$__rate_interval" in target["expr"]


@pytest.fixture
def prometheus(tmp_path: Path, shm_dir: Path) -> Iterator[tuple[str, ServiceProcess, ServiceProcess]]:
    with (
        ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst"), "--metrics-port", "0"]) as rx,
        ServiceProcess("sender", ["--metrics-port", "0"]) as tx,
    ):
        config = {
            "global": {"scrape_interval": f"{int(SCRAPE_SECONDS * 1000)}ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "livemig-sender", "static_configs": [{"targets": [f"127.0.0.1:{tx.metrics_port}"]}]},
                {"job_name": "livemig-receiver", "static_configs": [{"targets": [f"127.0.0.1:{rx.metrics_port}"]}]},
            ],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        check = subprocess.run(["promtool", "check", "config", str(config_path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        server = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/-/ready", timeout=1).status == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.2)
            yield url, tx, rx
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(20)


def query_range(url: str, expr: str, start: float, end: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": "0.5"})
    body = json.loads(urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def targets_up(url: str) -> bool:
    body = json.loads(urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5).read())
    targets = body["data"]["activeTargets"]
    return len(targets) == 2 and all(t["health"] == "up" for t in targets)


@requires_prometheus
def test_every_panel_has_data_during_a_real_migration(prometheus, shm_dir):
    url, tx, rx = prometheus
    deadline = time.monotonic() + 30
    while not targets_up(url):
        assert time.monotonic() < deadline, "scrape targets never came up"
        time.sleep(0.2)
    started = time.time()
    memory = shm_dir / "guest.img"
    guest = GuestProcess(
        memory,
        ["--size-mib", "64", "--touch-ratio", "0.5", "--rate", "8", "--threads", "2", "--zero-ratio", "0.3"],
    )
    try:
        channel, stub = sender_stub(tx.address)
        with channel:
            # A live migration kept in pre-copy for ~4 s (a slow assumed link), then forced.
            region = pb.GuestMemoryRegion(gpa=0, path=str(memory), dirty_log=f"{memory}.dirty")
            live_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=rx.address,
                    regions=[region],
                    guest_pid=guest.pid,
                    skip_zero_pages=True,
                    connections=2,
                    downtime_ms=1,
                    available_bandwidth_bytes_per_second=1000,
                    timeout_ms=4000,
                    max_iterations=1000,
                    timeout_strategy=pb.TIMEOUT_STRATEGY_FORCE,
                    compression=pb.COMPRESSION_ZSTD,  # for the compression panel
                    max_bandwidth_bytes_per_second=1 << 30,  # for the cap panel (far above loopback here)
                )
            ).migration_id
            # One that fails (no receiver there) and a refused batch, for the outcome and rejection panels.
            # Another guest's memory: a second migration of the running guest would be refused.
            other = shm_dir / "other.img"
            other.write_bytes(b"\1" * 4096)
            stub.StartMigration(
                pb.StartMigrationRequest(
                    destination="127.0.0.1:1", regions=[pb.GuestMemoryRegion(gpa=0, path=str(other))]
                )
            )
            import grpc

            with grpc.insecure_channel(rx.data_address) as receiver_channel:
                transfer = receiver_channel.stream_stream("/livemig.v1.Receiver/TransferPages", request_serializer=None)
                with pytest.raises(grpc.RpcError):
                    list(transfer(iter([encode_batch("nope", 1, [MemoryRange(0, 4)], [b"abcd"])])))
            final = list(stub.WatchMigration(pb.MigrationRequest(migration_id=live_id), timeout=120))[-1]
        assert final.state == pb.COMPLETED, final.error
    finally:
        guest.close()
    time.sleep(4 * SCRAPE_SECONDS + 3)  # let the last samples be scraped and rate windows close
    end = time.time()
    empty, flat = [], []
    for title, expr in dashboard_queries():
        result = query_range(url, expand(expr), started, end)
        values = [float(v) for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
        if not values:
            empty.append((title, expr))
        elif title in MUST_MOVE and max(values) <= 0:
            flat.append((title, expr))
    assert not empty, f"panels without data: {empty}"
    assert not flat, f"panels that never moved during the migration: {flat}"


@requires_prometheus
def test_shipped_prometheus_config_is_valid():
    result = subprocess.run(
        ["promtool", "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_figures_say_what_they_measure():
    """The operator's findings: share of what was scanned, downtime and durations over the
    dashboard's range (not since the start; no quantile one migration decides), rejections
    as operations."""
    panels = {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}
    share = panels["Zero-page share (of pages scanned)"]["targets"][0]["expr"]
    assert "livemig_sender_scanned_bytes_total" in share and "normal_pages" not in share
    downtime = [
        t["expr"] for t in panels["Downtime: expected vs measured"]["targets"] if "downtime_seconds_sum" in t["expr"]
    ]
    assert downtime and all("increase(" in expr and "[$__range]" in expr for expr in downtime)
    durations = panels["Migration durations (how many took at most each bound)"]
    assert durations["type"] == "bargauge" and "histogram_quantile" not in durations["targets"][0]["expr"]
    assert panels["Receiver rejections by reason"]["fieldConfig"]["defaults"]["unit"] == "ops"
