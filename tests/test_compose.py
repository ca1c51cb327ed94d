"""docker-compose.yml checked as far as a machine without a Docker engine allows.

It parses; every livemig service's command is a real `livemig` command line;
ports, hostnames, volumes and health checks line up with each other and with
the Prometheus and Grafana provisioning files.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from livemig.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
LIVEMIG_SERVICES = [name for name, s in SERVICES.items() if s.get("image") == "livemig:latest"]


def parse(command: list[str]) -> tuple[str, dict]:
    """Parse a livemig command line exactly as the entry point would, without running it."""
    ctx = cli.make_context("livemig", list(command))
    name = ctx._protected_args[0]
    sub = cli.get_command(ctx, name)
    assert sub is not None, f"livemig has no command {name!r}"
    sub_ctx = sub.make_context(name, list(ctx.args), parent=ctx)
    return name, sub_ctx.params


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def networks(service: str) -> set[str]:
    return set(SERVICES[service].get("networks", []))


def test_livemig_services_build_the_image_and_use_its_entry_point():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["livemig"]' in dockerfile
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert set(LIVEMIG_SERVICES) == {"receiver", "guest", "sender", "migrate"}
    # Built once (issue 11): four `build: .` with one image name built it four times and left
    # three untagged images that `down --rmi all` did not remove.
    builders = [name for name in LIVEMIG_SERVICES if "build" in SERVICES[name]]
    assert builders == ["receiver"] and SERVICES["receiver"]["build"] == "."
    for name in LIVEMIG_SERVICES:
        if name not in builders:
            assert SERVICES[name]["pull_policy"] == "never", f"{name} would pull livemig:latest"


def test_published_ports_are_bound_to_localhost_by_default():
    for service, port in (("prometheus", 9090), ("grafana", 3000)):
        (mapping,) = SERVICES[service]["ports"]
        published = r"\$\{LIVEMIG_PUBLISH_ADDRESS:-127\.0\.0\.1\}:\$\{LIVEMIG_\w+_PORT:-(\d+)\}:(\d+)"
        match = re.fullmatch(published, mapping)
        assert match, f"{service} publishes {mapping!r}, not on 127.0.0.1 by default"
        assert match.groups() == (str(port), str(port))


def test_the_paused_guest_is_stopped_without_the_default_ten_seconds():
    assert SERVICES["guest"]["stop_grace_period"] == "2s"


@pytest.mark.parametrize("service", LIVEMIG_SERVICES)
def test_every_command_parses(service):
    try:
        parse(SERVICES[service]["command"])
    except click.UsageError as error:
        pytest.fail(f"{service}: {error.format_message()}")


def test_healthchecks_ask_the_ports_the_services_listen_on():
    for service in ("receiver", "sender"):
        command = SERVICES[service]["command"]
        port = option_value(command, "--listen").rsplit(":", 1)[1]
        health = SERVICES[service]["healthcheck"]["test"]
        assert health[:3] == ["CMD", "livemig", "health"]
        parse(health[2:])
        assert option_value(health, "--address").endswith(f":{port}")


def test_migration_client_reaches_sender_and_sender_reaches_receiver():
    migrate = SERVICES["migrate"]["command"]
    name, params = parse(migrate)
    assert name == "send-migration"
    sender_host, sender_port = params["sender_address"].rsplit(":", 1)
    receiver_host, receiver_port = params["destination"].rsplit(":", 1)
    assert sender_port == option_value(SERVICES["sender"]["command"], "--listen").rsplit(":", 1)[1]
    assert receiver_port == option_value(SERVICES["receiver"]["command"], "--listen").rsplit(":", 1)[1]
    assert networks("migrate") & networks(sender_host)
    assert networks("sender") & networks(receiver_host)  # the migration link
    assert not networks("migrate") & networks(receiver_host)  # the client is on the source host only
    assert not (networks("receiver") & {"source-host"})


def test_guest_memory_is_shared_and_the_guest_can_be_paused():
    guest, sender, migrate = SERVICES["guest"], SERVICES["sender"], SERVICES["migrate"]
    memory = option_value(migrate["command"], "--memory")
    assert option_value(guest["command"], "--memory") == memory
    pid_file = option_value(guest["command"], "--pid-file")
    assert option_value(migrate["command"], "--guest-pid-file") == pid_file
    mount = "guest-memory:" + str(Path(memory).parent)
    for service in (guest, sender, migrate):
        assert any(v.startswith(mount) for v in service["volumes"])
    assert sender["pid"] == "service:guest" and guest["init"] is True
    assert "guest-memory" in COMPOSE["volumes"]
    receiver_dir = option_value(SERVICES["receiver"]["command"], "--memory-dir")
    assert f"destination-memory:{receiver_dir}" in SERVICES["receiver"]["volumes"]


def test_prometheus_scrapes_the_metrics_ports_on_shared_networks():
    prometheus = SERVICES["prometheus"]
    source = next(v.split(":")[0] for v in prometheus["volumes"] if v.split(":")[1] == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / source).read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for service in ("sender", "receiver"):
        port = option_value(SERVICES[service]["command"], "--metrics-port")
        expected.add(f"{service}:{port}")
        assert networks("prometheus") & networks(service), f"prometheus cannot reach {service}"
    assert targets == expected


def test_grafana_mounts_match_its_provisioning():
    grafana = SERVICES["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    for source in mounts:
        assert (ROOT / source).is_dir(), source
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/livemig.yaml").read_text())
    dashboards_path = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_path
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    url = datasource["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and SERVICES["prometheus"]["ports"][0].endswith(":9090")
    assert networks("grafana") & networks("prometheus")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_path) and (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()
