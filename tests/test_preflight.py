"""`send-migration --check`: every missing piece reported in one round, a forecast, and
nothing paused or sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import run_cli, sender_stub, start_guest

pytestmark = pytest.mark.e2e
MIB = 1 << 20


def check(sender: ServiceProcess, destination: str, *options: str):
    return run_cli(
        "send-migration", "--insecure", "--sender", sender.address, "--destination", destination, "--check", *options
    )


def test_a_good_request_is_ready_with_a_forecast_and_nothing_is_sent(sender, shm_dir):
    receiver = ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "destination")])
    image = shm_dir / "guest.img"
    make_image(image, 16 * MIB, 0.25, seed=2)
    guest = start_guest(image)
    try:
        result = check(
            sender, receiver.address, "--memory", str(image), "--skip-zero-pages", "--guest-pid", str(guest.pid),
            "--available-bandwidth", "8M",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ready to migrate" in result.stdout and "problem" not in result.stdout
        answer = json.loads(
            check(sender, receiver.address, "--memory", str(image), "--skip-zero-pages", "--json").stdout
        )
        assert answer.get("problems", []) == []
        send, zero = int(answer["send_bytes"]), int(answer["zero_bytes"])
        assert send + zero == 16 * MIB and 0.2 < send / (16 * MIB) < 0.3  # a quarter of the pages hold data
        assert "forecast: 0.5 s for one pass at 8.0 MiB/s" in result.stdout  # 4 MiB at 8 MiB/s
        assert int(answer["receiver_max_batch_bytes"]) > 0 and answer["receiver_data_ports"] >= 1
        stat = Path(f"/proc/{guest.pid}/stat").read_text()
        assert stat.rpartition(")")[2].split()[0] != "T"  # never paused
        # The receiver's trial session was aborted: no destination memory is left, no page written.
        assert not [path for path in (shm_dir / "destination").iterdir() if path.is_dir()]
    finally:
        guest.kill()
        guest.wait()
        receiver.stop()
    channel, stub = sender_stub(sender.address)
    with channel:
        assert all(
            m.destination != receiver.address for m in stub.ListMigrations(pb.ListMigrationsRequest()).migrations
        )


def test_every_missing_piece_is_reported_in_one_round(sender, shm_dir):
    result = check(sender, "127.0.0.1:1", "--memory", str(shm_dir / "missing.img"))
    assert result.returncode == 1
    problems = [line for line in result.stdout.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 2, result.stdout
    assert "not found" in problems[0] and "127.0.0.1:1" in problems[1]


def test_the_receiver_s_limits_are_checked(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 16 * MIB, 0.5)
    with ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "small"), "--max-destination-bytes", "4M"]) as small:
        result = check(sender, small.address, "--memory", str(image))
    assert result.returncode == 1
    assert "RESOURCE_EXHAUSTED" in result.stdout and "not ready" in result.stdout
