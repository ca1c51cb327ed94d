"""MigrationStats counts each acknowledged chunk once, and link busy time as a union."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from livemig.sender.bandwidth_cap import WireBudget
from livemig.sender.chunks import Chunk, ChunkOutcome, ChunkReport
from livemig.sender.connection_messages import ChunksDone
from livemig.sender.stats import BusyTime, MigrationStats
from livemig.sender.transfer import TransferPool, _Connection


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50)), max_size=30))
def test_busy_time_is_the_measure_of_the_union(intervals):
    """Intervals from many connection processes, in any order, overlapping or not."""
    busy = BusyTime()
    covered = set()
    for start, length in intervals:
        busy.add(float(start), float(start + length))
        covered.update(range(start, start + length))  # unit cells of the integer line
    assert busy.seconds() == len(covered)


def outcome(transmitted: int, zero: int, wire: int) -> ChunkOutcome:
    return ChunkOutcome(
        chunk_bytes=transmitted + zero,
        scanned_bytes=transmitted + zero,
        zero_bytes=zero,
        transmitted_bytes=transmitted,
        wire_bytes=wire,
        batches=1 if wire else 0,
    )


def test_resends_count_as_wire_only():
    stats = MigrationStats(total_bytes=12288, connections=2)
    stats.begin_iteration(12288, 3)
    first = ChunkReport(0, 1, outcome(4096, 4096, 4200), sent_at=10.0, acked_at=11.0)
    stats.add_chunk(first)
    resent = ChunkReport(1, 2, outcome(4096, 0, 4200), sent_at=10.5, acked_at=12.0, resent_wire_bytes=4200, resends=1)
    stats.add_chunk(resent)
    totals = stats.totals
    assert totals.transmitted_bytes == 8192 and totals.zero_bytes == 4096
    assert totals.wire_bytes == 3 * 4200  # the resend is wire, never payload
    assert stats.resent_batches == 1 and stats.processed_bytes == 12288
    assert totals.busy_seconds == 2.0  # [10, 11] and [10.5, 12] overlap: 2 s of link time
    assert stats.iterations[-1].counters.transmitted_bytes == 8192


def test_a_chunk_reported_twice_counts_once():
    """The transfer pool counts a chunk while it is outstanding only (its process may die
    after reporting it; what it reported is read before its death is handled)."""
    stats = MigrationStats(total_bytes=4096, connections=1)
    stats.begin_iteration(4096, 1)
    pool = object.__new__(TransferPool)
    pool.stats, pool._changed, pool.budget = stats, threading.Condition(), WireBudget()
    pool._spans, pool._remainders = None, []
    connection = _Connection(0, None, None, outstanding={1: Chunk(1, (), False)})
    report = ChunkReport(0, 1, outcome(4096, 0, 4200), sent_at=10.0, acked_at=11.0)
    pool._handle(connection, ChunksDone((report,)))
    pool._handle(connection, ChunksDone((report,)))
    assert stats.totals.transmitted_bytes == 4096 and stats.processed_bytes == 4096
    assert not connection.outstanding
