"""Two hosts for real: scripts/netns-demo.sh across a rate-limited veth pair between namespaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def netns_unavailable() -> str | None:
    """Why two-host tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"lm-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add refused: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


REASON = netns_unavailable()


@pytest.mark.skipif(REASON is not None, reason=f"two-host test skipped: {REASON}")
def test_migration_across_a_rate_limited_link(tmp_path):
    result_path = tmp_path / "result.json"
    env = {
        **os.environ,
        "LIVEMIG": f"{sys.executable} -m livemig.cli.main",
        "RATE": "200mbit",
        "SIZE_MIB": "32",
        "CONNECTIONS": "2",
        "JSON_OUT": str(result_path),
    }
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "netns-demo.sh")], env=env, capture_output=True, text=True, timeout=240
    )
    assert run.returncode == 0, run.stdout + run.stderr
    status = json.loads(result_path.read_text())
    assert status["state"] == "COMPLETED" and status["stats"]["verified"] is True
    # The pages really crossed the capped link: the wire rate cannot beat 200 Mbit/s (+ tbf burst).
    assert float(status["stats"]["throughput_bytes_per_second"]) * 8 <= 200e6 * 1.2
    assert "over a 200mbit link" in run.stdout
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "lm-src-" not in leftovers and "lm-dst-" not in leftovers
