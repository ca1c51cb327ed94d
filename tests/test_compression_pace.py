"""The compression level follows the bottleneck: up the ladder while batches wait for the
link, down at once when the stream waits for the builder (sender/compression_pace.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from livemig.common.compression import LZ4_LEVELS, ZSTD_LEVEL, ZSTD_LEVELS, PayloadCompressor, decompress
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.compression_pace import UP_AFTER, WAITED_SECONDS, CompressionPace

LINK_BOUND = (0.0, 0.05)  # (build wait, link wait): built at once, then waited for the link
CPU_BOUND = (0.05, 0.0)  # the stream waited for the batch to be built
BALANCED = (0.0, 0.0)
CAPPED = (0.05, 0.0, 0.05)  # the stream waited for the builder, which waited for chunks (a cap)


def pace(method: int = pb.COMPRESSION_ZSTD) -> CompressionPace:
    return CompressionPace(PayloadCompressor(method), connection=0)


def test_starts_at_the_cheapest_level() -> None:
    assert pace().compressor.level == ZSTD_LEVEL
    assert pace(pb.COMPRESSION_LZ4).compressor.level == LZ4_LEVELS[0]


def test_a_link_bound_connection_climbs_one_rung_per_run_of_waits_up_to_the_top() -> None:
    connection = pace()
    for _ in range(UP_AFTER - 1):
        connection.batch_sent(*LINK_BOUND)
    assert connection.compressor.level == ZSTD_LEVELS[0]  # one wait is not a trend
    connection.batch_sent(*LINK_BOUND)
    assert connection.compressor.level == ZSTD_LEVELS[1]
    for _ in range(UP_AFTER * len(ZSTD_LEVELS) * 2):
        connection.batch_sent(*LINK_BOUND)
    assert connection.compressor.level == ZSTD_LEVELS[-1]  # never past the ladder's top


def test_a_starved_stream_steps_down_at_once_and_never_below_the_bottom() -> None:
    connection = pace()
    for _ in range(UP_AFTER * 3):
        connection.batch_sent(*LINK_BOUND)
    assert connection.compressor.rung == 3
    connection.batch_sent(*CPU_BOUND)
    assert connection.compressor.rung == 2
    for _ in range(10):
        connection.batch_sent(*CPU_BOUND)
    assert connection.compressor.rung == 0


def test_hand_offs_and_interrupted_runs_do_not_climb() -> None:
    connection = pace()
    tiny = WAITED_SECONDS / 10
    for _ in range(20):
        connection.batch_sent(tiny, tiny)  # neither waited
    assert connection.compressor.rung == 0
    for _ in range(20):  # waits for the link, each run broken before it counts
        for _ in range(UP_AFTER - 1):
            connection.batch_sent(*LINK_BOUND)
        connection.batch_sent(*BALANCED)
    assert connection.compressor.rung == 0


def test_a_builder_that_waits_for_chunks_is_not_the_bottleneck_and_climbs() -> None:
    """Under a bandwidth cap chunks are handed out at the cap's rate: the stream waits
    for the builder, but the builder waits for chunks, with CPU to spare. The cap counts
    wire bytes, so a smaller payload is worth it: up, not down."""
    connection = pace()
    for _ in range(UP_AFTER * 2):
        connection.batch_sent(*CAPPED)
    assert connection.compressor.rung == 2
    connection.batch_sent(*CPU_BOUND)  # the builder busy and late: down at once
    assert connection.compressor.rung == 1


def test_a_given_level_is_the_only_rung() -> None:
    connection = CompressionPace(PayloadCompressor(pb.COMPRESSION_ZSTD, level=5), connection=0)
    for _ in range(10):
        connection.batch_sent(*LINK_BOUND)
    assert connection.compressor.level == 5


@pytest.mark.parametrize("method", [pb.COMPRESSION_ZSTD, pb.COMPRESSION_LZ4])
def test_every_rung_round_trips_and_the_top_shrinks_text_more(method: int) -> None:
    """Each level a pace may pick makes a frame the receiver takes; climbing buys bytes."""
    text = b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("test_*.py"))[:40])
    text = (text * (1 + (1 << 20) // len(text)))[: 1 << 20]
    compressor = PayloadCompressor(method)
    sizes = []
    for rung in range(len(compressor.levels)):
        compressor.rung = rung
        packed = compressor.compress([text], len(text))
        assert packed is not None
        assert decompress(method, packed, len(text)) == text
        sizes.append(len(packed))
    assert sizes[-1] < sizes[0]
    compressor.rung = len(compressor.levels) - 1
    assert compressor.compress([os.urandom(1 << 20)], 1 << 20) is None  # random still goes raw


def test_the_probe_runs_at_the_cheapest_level_on_any_rung() -> None:
    """A random batch is rejected by its probe; at the top rung that probe would cost zstd 9's
    price for the same answer, so it always runs at the bottom rung."""

    class Recording(PayloadCompressor):
        levels_used: list[int] = []

        def _compress(self, parts, raw_length, level=None):
            self.levels_used.append(self.level if level is None else level)
            return super()._compress(parts, raw_length, level)

    compressor = Recording(pb.COMPRESSION_ZSTD)
    compressor.rung = len(compressor.levels) - 1
    assert compressor.compress([os.urandom(1 << 20)], 1 << 20) is None
    assert compressor.levels_used == [ZSTD_LEVELS[0]]  # the probe only, at the bottom
