"""Auto-converge on a real link: a guest that dirties memory faster than a tc-capped link
converges when throttled, and does not (ends by its timeout strategy, guest resumed)
without it. Two hosts in network namespaces (tests/netns.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.cli.processes import GuestProcess
from tests import netns

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))]

# 32 Mbit/s carries ~3.8 MiB/s; the guest dirties 6 MiB/s of its 8 MiB.
LINK = "32mbit"
GUEST = ["--size", "8M", "--touch-ratio", "1", "--rate", "6M", "--threads", "1"]


@pytest.fixture
def hosts(shm_dir: Path) -> Iterator[netns.TwoHosts]:
    with netns.serving_hosts(LINK, shm_dir / "dst") as two:
        yield two


def migrate(hosts: netns.TwoHosts, guest: GuestProcess, *options: str) -> tuple[dict, str]:
    client = subprocess.run(
        hosts.send_migration(guest.memory, "--dirty-log", "--guest-pid", str(guest.pid), "--skip-zero-pages", *options),
        capture_output=True,
        text=True,
        timeout=150,
    )
    return json.loads(client.stdout), client.stderr


def test_a_guest_dirtying_faster_than_the_link_converges_only_with_auto_converge(hosts, shm_dir):
    with GuestProcess(shm_dir / "guest.img", GUEST) as guest:
        status, _stderr = migrate(
            hosts, guest, "--downtime", "300ms", "--migration-timeout", "8s", "--max-iterations", "100000"
        )
        assert status["state"] == "FAILED" and "did not converge" in status["error"]
        assert status["guest_state"] == "running" and not guest.stopped  # never paused
        assert status["convergence_forecast"].startswith("will not converge")  # said, with numbers

    with GuestProcess(shm_dir / "guest2.img", GUEST) as guest:
        status, _stderr = migrate(
            hosts,
            guest,
            "--auto-converge",
            "--downtime",
            "300ms",
            "--migration-timeout",
            "100s",
            "--max-iterations",
            "100000",
            "--verify",
        )
        assert status["state"] == "COMPLETED", status.get("error")
        assert status["stats"]["verified"] is True
        assert status["stats"]["throttle_percent"] == 0  # released at the end
        assert guest.stopped  # paused at switchover, as a completed migration leaves it
        guest.resume()
    print(f"\nauto-converge: {status['stats']['iterations']} iterations, downtime {status['stats']['downtime_ms']} ms")
