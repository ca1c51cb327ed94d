"""Chunks go to connection processes, and their reports come back, in groups.

The transfer pool hands out every chunk that credit allows at once, one message per
connection, still each to the connection with the fewest outstanding; a connection
process holds reports back while acknowledgements are on their way, and never one
that nothing will follow. No processes here: the pool's pipes are stand-ins that
record what is sent, and reports are handed to the pool as its reader would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.common.ranges import MemoryRange, RangeCursor
from livemig.sender.bandwidth_cap import WireBudget
from livemig.sender.chunk_spans import FILL
from livemig.sender.chunks import ChunkOutcome, ChunkReport
from livemig.sender.connection_messages import (
    REPORT_DELAY_SECONDS,
    REPORT_GROUP,
    ChunksDone,
    ConnectionSpec,
    SendChunks,
)
from livemig.sender.connection_process import GroupedReporter
from livemig.sender.defaults import DEFAULT_CHUNK_SPAN_FACTOR
from livemig.sender.stats import MigrationStats
from livemig.sender.transfer import CHUNKS_PER_CONNECTION, TransferPool, _Connection

PAGE = 4096
CHUNK = 16 * PAGE


def report(chunk_id: int, connection: int = 0) -> ChunkReport:
    outcome = ChunkOutcome(chunk_bytes=CHUNK, transmitted_bytes=CHUNK, wire_bytes=CHUNK + 100, batches=1)
    return ChunkReport(connection, chunk_id, outcome, 1.0, 2.0)


class Recorder:
    """A pipe to the parent that keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[ChunksDone] = []

    def send(self, message: ChunksDone) -> bool:
        self.sent.append(message)
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reports_wait_for_a_full_group_while_more_are_coming():
    pipe = Recorder()
    reporter = GroupedReporter(pipe, Clock())
    for chunk_id in range(1, REPORT_GROUP):
        reporter.chunk_done(report(chunk_id), more_coming=True)
    assert pipe.sent == []
    reporter.chunk_done(report(REPORT_GROUP), more_coming=True)
    assert [[r.chunk_id for r in m.reports] for m in pipe.sent] == [list(range(1, REPORT_GROUP + 1))]


def test_the_last_report_before_a_pause_goes_at_once_with_those_held():
    """Nothing in flight (or nothing left to build): nothing would push the group out."""
    pipe = Recorder()
    reporter = GroupedReporter(pipe, Clock())
    reporter.chunk_done(report(1), more_coming=True)
    reporter.chunk_done(report(2), more_coming=False)
    reporter.chunk_done(report(3), more_coming=False)
    assert [[r.chunk_id for r in m.reports] for m in pipe.sent] == [[1, 2], [3]]


def test_a_held_report_goes_once_it_is_old():
    """On a slow link acknowledgements come far apart: a report is never held for long."""
    pipe, clock = Recorder(), Clock()
    reporter = GroupedReporter(pipe, clock)
    reporter.chunk_done(report(1), more_coming=True)
    clock.now += REPORT_DELAY_SECONDS / 2
    reporter.chunk_done(report(2), more_coming=True)
    assert pipe.sent == []
    clock.now += REPORT_DELAY_SECONDS / 2 + 0.001
    reporter.chunk_done(report(3), more_coming=True)
    assert [[r.chunk_id for r in m.reports] for m in pipe.sent] == [[1, 2, 3]]


def test_flush_sends_what_is_held_and_nothing_else():
    pipe = Recorder()
    reporter = GroupedReporter(pipe, Clock())
    reporter.flush()
    assert pipe.sent == []
    reporter.chunk_done(report(1), more_coming=True)
    reporter.flush()
    reporter.flush()
    assert [[r.chunk_id for r in m.reports] for m in pipe.sent] == [[1]]


class ConnectionPipe:
    """The pool's end of a connection's pipe: keeps every SendChunks."""

    def __init__(self) -> None:
        self.messages: list[SendChunks] = []
        self.arrived = threading.Condition()

    def send(self, message: object) -> None:
        assert isinstance(message, SendChunks)
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()


def pool_of(connections: int, budget: WireBudget | None = None) -> TransferPool:
    """A transfer pool whose connections are pipes that record, nothing more."""
    pool = object.__new__(TransferPool)
    pool.stats = MigrationStats(total_bytes=0, connections=connections)
    pool.stats.begin_iteration(0, 0)
    pool.budget = budget or WireBudget()
    pool.stop = threading.Event()
    pool._split = list
    pool._changed = threading.Condition()
    pool._chunk_ids = iter(range(1, 1 << 30))
    pool._errors = []
    pool._spans, pool._remainders, pool._span_factor = None, [], DEFAULT_CHUNK_SPAN_FACTOR
    spec = ConnectionSpec(0, "127.0.0.1:1", None, "token", (), PAGE, CHUNK, True)
    pool._connections = [
        _Connection(index, spec, SimpleNamespace(pipe=ConnectionPipe(), process=None)) for index in range(connections)
    ]
    return pool


def acknowledge(
    pool: TransferPool, group: int, done: threading.Event, report_of: Callable[..., ChunkReport] | None = None
) -> list[tuple[int, int]]:
    """Play the connection processes: report what each was sent, `group` reports a message,
    the rest when it has nothing more in hand; returns (connection, outstanding) seen at
    each hand-out. report_of(order, connection index) makes a report (default: all sent)."""
    seen: list[tuple[int, int]] = []
    taken = [0] * len(pool._connections)
    while not done.is_set():
        for connection in pool._connections:
            pipe = connection.pipe
            with pipe.arrived:
                new = pipe.messages[taken[connection.index] :]
                taken[connection.index] = len(pipe.messages)
            if not new:
                continue
            with pool._changed:
                seen.append((connection.index, len(connection.outstanding)))
            orders = [order for message in new for order in message.orders]
            for start in range(0, len(orders), group):
                reports = tuple(
                    report_of(order, connection.index) if report_of else report(order.chunk_id, connection.index)
                    for order in orders[start : start + group]
                )
                pool._handle(connection, ChunksDone(reports))
        done.wait(0.001)
    return seen


def send_acknowledged(
    pool: TransferPool, ranges: list[MemoryRange], group: int, report_of: Callable[..., ChunkReport] | None = None
) -> list[tuple[int, int]]:
    """pool.send(ranges) with a thread playing the connection processes (acknowledge)."""
    done = threading.Event()
    seen: list[tuple[int, int]] = []
    player = threading.Thread(target=lambda: seen.extend(acknowledge(pool, group, done, report_of)))
    player.start()
    try:
        pool.send(ranges, zero_records=False)
    finally:
        done.set()
        player.join()
    return seen


@settings(max_examples=25, deadline=None)
@given(
    connections=st.integers(1, 3),
    pages=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    group=st.integers(1, REPORT_GROUP),
)
def test_every_chunk_is_handed_out_once_in_order_within_credit(connections, pages, group):
    pool = pool_of(connections)
    ranges, gpa = [], 0
    for count in pages:
        ranges.append(MemoryRange(gpa, count * PAGE))
        gpa += (count + 1) * PAGE  # a hole between ranges
    seen = send_acknowledged(pool, ranges, group)
    orders = [
        order for connection in pool._connections for message in connection.pipe.messages for order in message.orders
    ]
    ids = sorted(order.chunk_id for order in orders)
    assert ids == list(range(1, len(ids) + 1))  # each id once, none skipped
    sent = sorted(tuple(row) for order in orders for row in order.ranges.tolist())
    merged: list[list[int]] = []
    for gpa, length in sent:  # pieces back to back merge; an overlap or a gap would show
        if merged and merged[-1][0] + merged[-1][1] == gpa:
            merged[-1][1] += length
        else:
            merged.append([gpa, length])
    assert merged == [[r.gpa, r.length] for r in ranges]  # every byte of the iteration, once
    for connection in pool._connections:
        chunk_ids = [order.chunk_id for message in connection.pipe.messages for order in message.orders]
        assert chunk_ids == sorted(chunk_ids)  # a connection gets its chunks in id order
        for message in connection.pipe.messages:
            assert len(message.orders) <= CHUNKS_PER_CONNECTION
    assert all(outstanding <= CHUNKS_PER_CONNECTION for _index, outstanding in seen)
    assert not any(connection.outstanding for connection in pool._connections)


@settings(max_examples=25, deadline=None)
@given(
    connections=st.integers(1, 3),
    pages=st.lists(st.integers(1, 200), min_size=1, max_size=12),
    carried=st.lists(st.integers(1, 16), min_size=1, max_size=5),
    share=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
)
def test_memory_a_batch_left_goes_out_again_and_every_byte_is_carried_once(connections, pages, carried, share):
    """Connections whose batches carry only the first pages of a chunk (`carried`, in turn)
    and report the rest: it is handed out in later chunks until every byte went in some
    batch, once; and chunks grow as reports say memory is sparse (`share` of it data)."""
    pool = pool_of(connections)
    ranges, gpa = [], 0
    for count in pages:
        ranges.append(MemoryRange(gpa, count * PAGE))
        gpa += (count + 1) * PAGE
    lock, turn, kept, spans = threading.Lock(), [0], [], []

    def report_of(order, connection: int) -> ChunkReport:
        chunk = [MemoryRange(gpa, length) for gpa, length in order.ranges.tolist()]
        cursor = RangeCursor(chunk)
        with lock:
            batch = cursor.take(carried[turn[0] % len(carried)] * PAGE)
            turn[0] += 1
            kept.extend(batch)
            spans.append(sum(r.length for r in chunk))
        left = cursor.take(cursor.remaining_bytes) if cursor else ()
        covered = sum(r.length for r in batch)
        outcome = ChunkOutcome(chunk_bytes=covered, transmitted_bytes=int(covered * share), wire_bytes=100, batches=1)
        return ChunkReport(connection, order.chunk_id, outcome, 1.0, 2.0, remainder=left)

    send_acknowledged(pool, ranges, 1, report_of)
    kept.sort()
    merged: list[list[int]] = []
    for range_ in kept:  # carried pieces back to back merge; an overlap or a gap would show
        if merged and merged[-1][0] + merged[-1][1] == range_.gpa:
            merged[-1][1] += range_.length
        else:
            merged.append([range_.gpa, range_.length])
    assert merged == [[r.gpa, r.length] for r in ranges]
    assert not pool._remainders and not any(connection.outstanding for connection in pool._connections)
    assert max(spans) <= DEFAULT_CHUNK_SPAN_FACTOR * CHUNK
    if share < FILL / 2 and sum(pages) * PAGE > 40 * CHUNK:  # a sparse and large iteration: spans grew
        assert max(spans) > CHUNK


def test_a_small_pass_after_sparse_memory_still_goes_out_over_every_connection():
    """Spans grow with sparse memory, but never so wide that a pass over dirty pages (or
    the end of any pass) leaves a connection idle: the final copy of a live migration and
    its downtime estimate count on every connection carrying a share."""

    def sparse(order, connection: int) -> ChunkReport:
        span = int(order.ranges[:, 1].sum())
        outcome = ChunkOutcome(chunk_bytes=span, transmitted_bytes=span // 10, wire_bytes=100, batches=1)
        return ChunkReport(connection, order.chunk_id, outcome, 1.0, 2.0)

    pool = pool_of(3)
    send_acknowledged(pool, [MemoryRange(0, 400 * CHUNK)], 1, sparse)
    spans = [int(o.ranges[:, 1].sum()) for c in pool._connections for m in c.pipe.messages for o in m.orders]
    assert max(spans) == DEFAULT_CHUNK_SPAN_FACTOR * CHUNK  # sparse: wide chunks
    for connection in pool._connections:
        connection.pipe.messages.clear()
    send_acknowledged(pool, [MemoryRange(1 << 30, 3 * CHUNK)], 1, sparse)  # a small pass
    per_connection = [[o for m in c.pipe.messages for o in m.orders] for c in pool._connections]
    assert all(len(orders) == 1 for orders in per_connection), per_connection
    assert all(int(orders[0].ranges[:, 1].sum()) == CHUNK for orders in per_connection)


def test_credit_returned_in_a_group_is_spent_in_one_message_per_connection():
    """Reports of 4 chunks at a time free 4 credits at a time: 4 chunks per message, after
    the first fill, and both connections kept as evenly loaded as one at a time would."""
    pool = pool_of(2)
    send_acknowledged(pool, [MemoryRange(0, 200 * CHUNK)], REPORT_GROUP)
    counts = [sum(len(m.orders) for m in c.pipe.messages) for c in pool._connections]
    messages = sum(len(c.pipe.messages) for c in pool._connections)
    assert sum(counts) == 200
    assert abs(counts[0] - counts[1]) <= REPORT_GROUP + CHUNKS_PER_CONNECTION
    assert messages < 150  # one message per chunk before
    first = pool._connections[0].pipe.messages[0]
    assert [order.chunk_id for order in first.orders][:2] == [1, 3]  # the first fill alternates


def test_a_capped_budget_hands_out_only_what_it_allows():
    """With the bandwidth cap, a chunk is handed out only once the budget has room for it:
    a group never carries chunks ahead of the cap."""
    # 8 chunks a second, one at a time: a group of two would need the migration thread
    # held 125 ms between two chunks of one hand-out.
    budget = WireBudget(rate=8 * CHUNK, burst=CHUNK)
    pool = pool_of(1, budget)
    send_acknowledged(pool, [MemoryRange(0, 4 * CHUNK)], 1)
    sizes = [len(message.orders) for message in pool._connections[0].pipe.messages]
    assert sum(sizes) == 4 and max(sizes) == 1
