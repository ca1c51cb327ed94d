"""Real migrations between real `livemig sender` and `livemig receiver` processes on loopback."""

from __future__ import annotations

import json
import os

import pytest

from livemig.cli.images import make_image
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import assert_destination_equals_source, assert_stats_invariants, migrate, run_cli

pytestmark = pytest.mark.e2e
MIB = 1 << 20


@pytest.mark.parametrize("connections", [1, 4])
@pytest.mark.parametrize("touched", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("skip", [True, False])
def test_migration_is_byte_exact(sender, receiver, shm_dir, touched, connections, skip):
    image = shm_dir / "guest.img"
    touched_pages = make_image(image, 24 * MIB, touched, seed=int(touched * 10) + connections)
    regions = [(0, image)]
    status = migrate(
        sender.address, receiver.address, regions, connections=connections, skip_zero_pages=skip, verify=True
    )
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified
    assert status.stats.connections == connections
    assert_destination_equals_source(status, regions)
    assert_stats_invariants(status, skip)
    stats = status.stats
    if skip:
        assert stats.transmitted_bytes == touched_pages * 4096
        assert stats.normal_pages == touched_pages
        assert stats.zero_pages == 24 * MIB // 4096 - touched_pages
    else:
        assert stats.transmitted_bytes == 24 * MIB
        assert stats.normal_pages == 24 * MIB // 4096
    # The receiver allocates only what it was sent.
    allocated = sum(os.stat(r.path).st_blocks * 512 for r in status.destination_regions)
    assert allocated <= stats.transmitted_bytes * 1.01 + 64 * 1024


def test_several_regions_with_gaps_and_odd_batch_size(sender, receiver, shm_dir):
    regions = []
    for index, (gpa, size, touched) in enumerate(
        [(0, 8 * MIB, 0.3), (1 << 32, 3 * MIB, 0.9), (0x2_0000_0000, MIB, 0.0)]
    ):
        path = shm_dir / f"region{index}.img"
        make_image(path, size, touched, seed=index)
        regions.append((gpa, path))
    # A batch size that is not a page multiple: chunks are cut at page multiples below it.
    status = migrate(
        sender.address,
        receiver.address,
        regions[::-1],
        connections=3,
        skip_zero_pages=True,
        verify=True,
        max_batch_bytes=100_000,
    )
    assert status.state == pb.COMPLETED, status.error
    assert_destination_equals_source(status, regions)
    assert_stats_invariants(status, True)


def test_huge_page_size(sender, receiver, shm_dir):
    image = shm_dir / "huge.img"
    make_image(image, 16 * MIB, 0.5, page_size=2 * MIB, seed=3)
    status = migrate(
        sender.address, receiver.address, [(0, image)], skip_zero_pages=True, page_size=2 * MIB, verify=True
    )
    assert status.state == pb.COMPLETED, status.error
    assert status.page_size == 2 * MIB
    assert status.stats.zero_pages + status.stats.normal_pages == 8
    assert_destination_equals_source(status, [(0, image)])


def test_unset_fields_take_documented_defaults(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.5)
    status = migrate(sender.address, receiver.address, [(0, image)])  # only destination and regions
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.connections == 1
    assert status.page_size == 4096
    assert not status.skip_zero_pages and status.stats.scanned_bytes == 0
    assert status.stats.transmitted_bytes == 4 * MIB
    assert not status.stats.verified
    assert_destination_equals_source(status, [(0, image)])


def test_cli_send_migration_json(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.25)
    result = run_cli(
        "send-migration",
        "--insecure",
        "--sender",
        sender.address,
        "--destination",
        receiver.address,
        "--memory",
        f"{image}@0x100000",
        "--skip-zero-pages",
        "--verify",
        "--connections",
        "2",
        "--json",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "COMPLETED"
    assert status["stats"]["verified"] is True
    assert int(status["stats"]["zero_bytes"]) + int(status["stats"]["transmitted_bytes"]) == 4 * MIB
    assert int(status["destination_regions"][0]["gpa"]) == 0x100000
    # Wire bytes over transfer time: positive, and never inflated by the skipped bytes.
    stats = status["stats"]
    assert float(stats["throughput_bytes_per_second"]) > 0
    assert int(stats["wire_bytes"]) >= int(stats["transmitted_bytes"]) > 0


def test_cli_exits_nonzero_when_not_completed(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    result = run_cli(
        "send-migration",
        "--insecure",
        "--sender",
        sender.address,
        "--destination",
        "127.0.0.1:1",
        "--memory",
        str(image),
        timeout=120,
    )
    assert result.returncode == 1
    assert "FAILED" in result.stdout and "unavailable" in result.stdout


def test_adjacent_regions_stay_separate_files(sender, receiver, shm_dir):
    regions = []
    for index, gpa in enumerate([0, 2 * MIB, 4 * MIB]):  # each ends where the next begins
        path = shm_dir / f"adjacent{index}.img"
        make_image(path, 2 * MIB, 0.6, seed=index)
        regions.append((gpa, path))
    for connections, batch in [(1, 0), (2, 65536)]:
        status = migrate(
            sender.address,
            receiver.address,
            regions,
            connections=connections,
            skip_zero_pages=True,
            verify=True,
            max_batch_bytes=batch,
        )
        assert status.state == pb.COMPLETED, status.error
        assert_destination_equals_source(status, regions)
