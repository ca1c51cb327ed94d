"""Two hosts for real: scripts/netns-demo.sh across a rate-limited veth pair between namespaces."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


REASON = netns.unavailable()


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


@pytest.mark.skipif(REASON is not None, reason=f"two-host test skipped: {REASON}")
def test_cut_link_fails_the_migration_in_bounded_time(shm_dir):
    """veth down mid-transfer: no RST ever arrives; keepalive and the acknowledgement watchdog
    must notice. The guest is resumed, nothing hangs."""
    import time

    from livemig.cli.images import make_image
    from tests.helpers import start_guest
    from tests.netns import TwoHosts

    hosts = TwoHosts(rate="100mbit")
    image = shm_dir / "guest.img"
    make_image(image, 128 * (1 << 20), 1.0)
    guest = start_guest(image)  # maps the image, as a VMM would
    processes = []
    try:
        processes += hosts.start_services(shm_dir / "dst")
        client = subprocess.Popen(
            hosts.send_migration(image, "--guest-pid", str(guest.pid)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(client)
        time.sleep(2)  # ~25 MB of 128 MiB across 100 Mbit/s: mid-transfer
        assert client.poll() is None, "migration finished before the cut"
        hosts.cut()
        cut_at = time.monotonic()
        output, _ = client.communicate(timeout=90)
        noticed = time.monotonic() - cut_at
        print(f"cut link noticed, migration FAILED after {noticed:.1f} s")
        status = json.loads(output)
        assert status["state"] == "FAILED" and "unavailable" in status["error"]
        assert noticed < 60, f"took {noticed:.0f} s to notice the cut link"
        state = Path(f"/proc/{guest.pid}/stat").read_text().rpartition(")")[2].split()[0]
        assert state != "T"  # resumed
    finally:
        for process in processes:
            process.kill()
            process.wait()
        guest.kill()
        guest.wait()
        hosts.close()


@pytest.mark.skipif(REASON is not None, reason=f"two-host test skipped: {REASON}")
def test_many_connections_sharing_a_slow_link_complete(shm_dir):
    """8 connections over 20 Mbit/s move ~0.3 MB/s each, so a 4 MiB batch takes ~14 s to
    arrive: slow, not stalled. The acknowledgement watchdog allows a batch time for its
    size (sender/stream.py); with a flat 10 s this migration failed."""
    import time

    from livemig.cli.images import make_image
    from tests.netns import TwoHosts

    hosts = TwoHosts(rate="20mbit")
    image = shm_dir / "guest.img"
    make_image(image, 32 * (1 << 20), 1.0, seed=4)
    processes = []
    try:
        processes += hosts.start_services(shm_dir / "dst")
        started = time.monotonic()
        client = subprocess.run(
            hosts.send_migration(image, "--connections", "8", "--max-batch-bytes", "4M", "--verify"),
            capture_output=True,
            text=True,
            timeout=180,
        )
        took = time.monotonic() - started
        status = json.loads(client.stdout)
        print(f"32 MiB over 20 Mbit/s, 8 connections, 4 MiB batches: {status['state']} in {took:.1f} s")
        assert status["state"] == "COMPLETED", status.get("error")
        assert status["stats"]["verified"] is True
        assert took > 10  # each batch really took longer than the old flat allowance
    finally:
        for process in processes:
            process.kill()
            process.wait()
        hosts.close()
