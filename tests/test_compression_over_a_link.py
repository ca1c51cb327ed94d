"""Over a slow link the compression level climbs, and the migration stays byte-exact: two
hosts in network namespaces joined by a tc-limited veth pair (tests/netns.py)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.common.compression import ZSTD_LEVEL, ZSTD_LEVELS
from tests import netns
from tests.test_compression import words_image

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(netns.unavailable() is not None, reason=str(netns.unavailable()))]

MIB = 1 << 20
# Random words compress about 2.5x, at hundreds of MiB/s a core at zstd's low levels: at
# 40 Mbit/s (5 MB/s) the link, not the CPU, holds every connection back, by a margin no
# load on 2 cores can close.
# Batches of 1 MiB, so that each connection has many more than its window of 4 to send:
# the pace reads the link from batches that wait for it.
LINK = "40mbit"


@pytest.fixture
def hosts(shm_dir: Path) -> Iterator[netns.TwoHosts]:
    with netns.serving_hosts(LINK, shm_dir / "dst") as two:
        yield two


def test_a_slow_link_raises_the_compression_level(hosts, shm_dir):
    image = shm_dir / "guest.img"
    words_image(image, 24 * MIB)
    client = subprocess.run(
        hosts.send_migration(
            image,
            "--skip-zero-pages",
            "--compress",
            "zstd",
            "--connections",
            "2",
            "--max-batch-bytes",
            "1M",
            "--verify",
        ),
        capture_output=True,
        text=True,
        timeout=150,
    )
    status = json.loads(client.stdout)
    assert status["state"] == "COMPLETED", status.get("error")
    stats = status["stats"]
    assert stats["verified"] is True
    assert_destination_equals_source_json(status, image)
    # Started at the bottom, climbed while batches waited for the link.
    assert stats.get("lowest_compression_level", 0) >= ZSTD_LEVEL
    assert stats["highest_compression_level"] > ZSTD_LEVEL, stats
    assert stats["highest_compression_level"] in ZSTD_LEVELS
    print(
        f"\n{LINK}: levels {stats.get('lowest_compression_level', 0)}-{stats['highest_compression_level']}, "
        f"ratio {int(stats['compressed_raw_bytes']) / int(stats['compressed_bytes']):.2f}"
    )


def assert_destination_equals_source_json(status: dict, image: Path) -> None:
    """The destination file (named in the JSON status) equals the image byte for byte."""
    (region,) = status["destination_regions"]
    assert Path(region["path"]).read_bytes() == image.read_bytes()
