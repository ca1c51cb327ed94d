"""N connection processes for the whole migration, fed one iteration at a time.

`send()` cuts an iteration's ranges into chunks (like Cloud Hypervisor's
`MemoryRangeTable::partition`; each chunk as wide as sender/chunk_spans.py says
from how dense the memory reported so far was), gives each chunk an id (its
batch id) and hands it to the connection with the fewest chunks outstanding, at most
CHUNKS_PER_CONNECTION each (credit-based flow control keeps every process busy
and sender memory bounded). Chunks handed out together (credit comes back in
groups of reports) go to each connection in one message. It returns when every
chunk was acknowledged: the iteration barrier. A batch that reached the batch
limit before the end of its chunk reports the rest (ChunkReport.remainder); that
memory goes out first in the next chunks, under new ids, and the barrier waits
for it too.

Each connection is a process of its own (sender/connection_process.py), so
reading, scanning, framing and streaming of different connections run on
different cores. This pool, in the migration process, is the one reader of
their reports and hands each to MigrationStats, the one owner of statistics and
metrics. A connection process that dies is a broken connection: a new one is
started and the dead one's unacknowledged chunks go to it again under the same
ids and the next attempt number (their pages are read again; the receiver counts
a batch id once, its latest attempt), up to MAX_RETRIES times without progress;
then the migration fails. Each chunk also carries the lowest id still
unacknowledged when it was handed out (PageBatch.settled_below): ids are handed
out in increasing order and an acknowledged chunk is never sent again, so the
receiver may forget every id below it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import multiprocessing.connection
import multiprocessing.process
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from livemig.common.ranges import MemoryRange, RangeCursor, RangeTable, align_down, ranges_to_array
from livemig.common.retry_budget import RetryBudget
from livemig.common.worker_processes import UnknownMessage, WorkerLog, read_reports, relog
from livemig.sender.bandwidth_cap import WireBudget
from livemig.sender.batch_builder import Chunk
from livemig.sender.chunk_spans import ChunkSpans
from livemig.sender.connection_messages import (
    REPORT_GROUP,
    Begin,
    ChunkOrder,
    ChunksDone,
    Close,
    ConnectionSpec,
    Failed,
    Finished,
    FromConnection,
    SendChunks,
    Stop,
    ToConnection,
)
from livemig.sender.connection_pool import ConnectionProcessPool, PooledProcess, default_pool
from livemig.sender.defaults import DEFAULT_CHUNK_SPAN_FACTOR
from livemig.sender.receiver_offer import check_offer
from livemig.sender.stats import MigrationStats
from livemig.sender.stream import MAX_RETRIES, RETRY_BUDGET_SECONDS, WINDOW_BATCHES

log = logging.getLogger("livemig.sender")

_POLL_SECONDS = 0.2
# The window in flight, the next ones being prepared, and acknowledged ones whose
# reports the connection still holds (sender/connection_messages.py).
CHUNKS_PER_CONNECTION = WINDOW_BATCHES + 2 + REPORT_GROUP - 1
JOIN_SECONDS = 10.0


class TransferStopped(Exception):
    """The pool was stopped (cancel or a failed stream) before the iteration finished."""


class ConnectionFailed(Exception):
    """A connection gave up; carries the gRPC status name of the cause, if any."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class _Connection:
    """The migration process's view of one connection process."""

    @property
    def process(self) -> multiprocessing.process.BaseProcess:
        return self.worker.process

    @property
    def pipe(self) -> multiprocessing.connection.Connection:
        return self.worker.pipe

    index: int
    spec: ConnectionSpec | None
    worker: PooledProcess
    outstanding: dict[int, Chunk] = field(default_factory=dict)
    finished: bool = False
    failed: bool = False
    # Deaths in a row without progress: the same budget as a stream's reconnects.
    restarts: RetryBudget = field(default_factory=lambda: RetryBudget(MAX_RETRIES, RETRY_BUDGET_SECONDS))


class TransferPool:
    """One migration's connections, in the migration's thread of the sender's control
    process: hands chunks out, reads every report, restarts dead connection processes
    (taken from the sender-wide ConnectionProcessPool)."""

    def __init__(
        self,
        connections: int,
        stats: MigrationStats,
        stop: threading.Event,
        split: Callable[[Iterable[MemoryRange]], list[MemoryRange]],
        log_extra: dict[str, str] | None = None,
        processes: ConnectionProcessPool | None = None,
        budget: WireBudget | None = None,
        span_factor: int = DEFAULT_CHUNK_SPAN_FACTOR,
    ) -> None:
        self.stats = stats
        self.budget = budget or WireBudget()  # the bandwidth cap (sender/bandwidth_cap.py); none by default
        self._split = split  # cuts ranges where guest memory regions (files) meet
        self.stop = stop
        self._log_extra = log_extra or {}
        self._processes = processes or default_pool()
        self._changed = threading.Condition()
        self._chunk_ids = itertools.count(1)
        self._span_factor = span_factor
        self._spans: ChunkSpans | None = None  # sizes chunks by how dense memory was (send() makes it)
        self._remainders: list[MemoryRange] = []  # memory batches left of their chunks, not handed out again yet
        self._errors: list[BaseException] = []
        self._closed = False
        self._closing = False
        self._abandoned = False  # close() gave up waiting: deaths are no longer restarts
        # Taken (or started) now, while the receiver prepares the session: begin() says where to stream.
        self._connections = [self._start(index) for index in range(connections)]
        self._reader = threading.Thread(target=self._read, name="transfer-reports", daemon=True)
        self._reader.start()

    # -- processes -----------------------------------------------------------------

    def _start(self, index: int, spec: ConnectionSpec | None = None) -> _Connection:
        worker = self._processes.acquire()
        if spec is not None:
            worker.pipe.send(Begin(spec))
        return _Connection(index, spec, worker)

    def begin(self, specs: list[ConnectionSpec]) -> None:
        """The session is prepared: each connection learns its endpoint, token and guest files.
        Raises ReceiverOfferRefused (before any connection begins) for a receiver's batch
        limit or data port this sender does not accept (sender/receiver_offer.py)."""
        check_offer(specs)
        with self._changed:
            for connection, spec in zip(self._connections, specs, strict=True):
                connection.spec = spec
                self._send(connection, Begin(spec))

    def _restart(self, connection: _Connection) -> None:
        """A connection process died: start another and give it the dead one's chunks."""
        index = connection.index
        if connection.restarts.failed(time.monotonic()):
            self._fail(
                ConnectionFailed(
                    f"connection {index}: its process died (exit code {connection.process.exitcode}) "
                    f"{connection.restarts.failures} times without progress",
                    "UNAVAILABLE",
                )
            )
            return
        log.warning(
            "connection %d: process died (exit code %s); restarting it (try %d of %d), resending %d chunks",
            index,
            connection.process.exitcode,
            connection.restarts.failures,
            MAX_RETRIES,
            len(connection.outstanding),
            extra=self._log_extra,
        )
        self._processes.discard(connection.worker)
        fresh = self._start(index, connection.spec)
        with self._changed:  # send() adds and sends chunks under this lock: none is sent twice
            connection.worker = fresh.worker
            resent = []
            for chunk_id in sorted(connection.outstanding):
                chunk = connection.outstanding[chunk_id]
                again = dataclasses.replace(chunk, attempt=chunk.attempt + 1)  # read again: maybe other bytes
                connection.outstanding[chunk_id] = again
                resent.append(again)
            self._send_chunks(connection, resent)
            if self._closing:
                self._send(connection, Close())

    # -- reports -------------------------------------------------------------------

    def _read(self) -> None:
        """The one reader of every connection's reports (and of their deaths)."""
        stop_sent = False
        while True:
            with self._changed:
                live = [c for c in self._connections if not (c.finished or c.failed)]
                if not live:
                    self._changed.notify_all()
                    return
            if self.stop.is_set() and not stop_sent:
                stop_sent = True
                for connection in live:
                    self._send(connection, Stop())
            read_reports(live, self._handle, self._died, _POLL_SECONDS)

    def _handle(self, connection: _Connection, message: FromConnection) -> None:
        match message:
            case ChunksDone(reports):
                # Counted once: a chunk is outstanding until its first report (this thread
                # alone removes chunks), and a restart resends only outstanding ones.
                with self._changed:
                    chunks = [connection.outstanding.get(report.chunk_id) for report in reports]
                for report, chunk in zip(reports, chunks, strict=True):
                    if chunk is not None:
                        self.stats.add_chunk(report)  # before the chunk leaves: send()'s barrier waits for it
                        self.budget.settle(
                            self._reserved_bytes(chunk.length), report.outcome.wire_bytes + report.resent_wire_bytes
                        )
                        if self._spans is not None:
                            self._spans.observe(report.outcome)
                with self._changed:
                    for report, chunk in zip(reports, chunks, strict=True):
                        if chunk is not None:  # what its batch left goes out before the chunk counts as done
                            self._remainders.extend(report.remainder)
                        connection.outstanding.pop(report.chunk_id, None)
                    connection.restarts.progressed()
                    self._changed.notify_all()
            case WorkerLog():
                relog(message, self._log_extra)
            case Finished():
                with self._changed:
                    connection.finished = True
                    self._changed.notify_all()
            case Failed(error):
                with self._changed:
                    connection.failed = True
                self._fail(ConnectionFailed(error.message, error.status))
            case _:
                raise UnknownMessage(message)

    def _died(self, connection: _Connection) -> None:
        if connection.finished or connection.failed:
            return
        if self.stop.is_set() or self._abandoned:
            with self._changed:
                connection.failed = True  # stopped on purpose: nothing to report
                self._changed.notify_all()
            return
        self._restart(connection)

    def _fail(self, error: BaseException) -> None:
        with self._changed:
            self._errors.append(error)
            self._changed.notify_all()
        self.stop.set()

    # -- the iteration ---------------------------------------------------------------

    def _send(self, connection: _Connection, message: ToConnection) -> None:
        # A gone process: the reader notices its death and restarts it.
        with contextlib.suppress(OSError, EOFError, ValueError):
            connection.pipe.send(message)

    def _send_chunks(self, connection: _Connection, chunks: list[Chunk]) -> None:
        if chunks:
            self._send(connection, SendChunks(tuple(_order(chunk) for chunk in chunks)))

    def _has_credit(self) -> bool:
        """Some connection may take another chunk (called under the lock)."""
        return any(len(c.outstanding) < CHUNKS_PER_CONNECTION for c in self._connections)

    def _settled_below(self, chunk_id: int) -> int:
        """The lowest chunk id not yet acknowledged, `chunk_id` (about to be handed out)
        included: every id below it is settled for good (called under the lock; an
        acknowledged chunk is never sent again)."""
        return min((min(c.outstanding) for c in self._connections if c.outstanding), default=chunk_id)

    def send(self, ranges: Iterable[MemoryRange], zero_records: bool) -> None:
        """Send every page of `ranges`; returns once all of it is acknowledged (what a
        batch left of its chunk included: it goes out in a later chunk)."""
        first = self._connections[0].spec
        assert first is not None, "begin() comes first"
        if self._spans is None:  # one estimate for the whole migration: iterations follow each other
            self._spans = ChunkSpans(first.chunk_bytes, first.page_size, self._span_factor)
        cursor = RangeCursor(self._split(RangeTable.of(ranges)))
        chunk_ranges, reserve = self._next_chunk_ranges(cursor)
        while True:
            if not chunk_ranges:  # every range handed out: wait for the last reports and their remainders
                with self._changed:
                    while not self._remainders and any(c.outstanding for c in self._connections):
                        if self.stop.is_set():
                            raise TransferStopped()
                        self._changed.wait(_POLL_SECONDS)
                chunk_ranges, reserve = self._next_chunk_ranges(cursor)
                if not chunk_ranges:
                    break
                continue
            if not self.budget.wait(self.stop, reserve):  # the bandwidth cap (sender/bandwidth_cap.py)
                raise TransferStopped()
            with self._changed:
                while not self._has_credit():
                    if self.stop.is_set():
                        raise TransferStopped()
                    self._changed.wait(_POLL_SECONDS)
                if self.stop.is_set():
                    raise TransferStopped()
                # Every chunk that credit and the cap allow now, each to the connection with
                # the fewest outstanding; then one message per connection.
                handed: dict[int, list[Chunk]] = {}
                while chunk_ranges and self._has_credit() and self.budget.delay(reserve) == 0:
                    target = min(self._connections, key=lambda c: len(c.outstanding))
                    chunk_id = next(self._chunk_ids)
                    chunk = Chunk(chunk_id, chunk_ranges, zero_records, settled_below=self._settled_below(chunk_id))
                    self.budget.reserve(reserve)
                    target.outstanding[chunk.chunk_id] = chunk
                    handed.setdefault(target.index, []).append(chunk)
                    chunk_ranges, reserve = self._next_chunk_ranges(cursor)
                for index, chunks in handed.items():  # under the lock: a restart resends outstanding chunks
                    self._send_chunks(self._connections[index], chunks)
        if self.stop.is_set():
            raise TransferStopped()

    def _next_chunk_ranges(self, cursor: RangeCursor) -> tuple[tuple[MemoryRange, ...], int]:
        """The next chunk's ranges and what the cap reserves for it (_reserved_bytes), of
        the span ChunkSpans gives it: what earlier batches left of their chunks first,
        then the iteration's ranges in order (empty: none left for now). No wider than an
        even share of what is left of the iteration over the connections (and never below
        the limit): a small pass over dirty pages, and the end of every pass, keep every
        connection busy, as chunks of the limit did; the downtime estimate and the final
        copy count on that."""
        spans = self._spans
        assert spans is not None
        with self._changed:
            left = RangeCursor(sorted(self._remainders))
            share = -(-(cursor.remaining_bytes + left.remaining_bytes) // len(self._connections))
            span = max(spans.payload_bytes, min(spans.next_span(), align_down(share, spans.page_size)))
            piece = left.take(span) if left else ()
            taken = sum(r.length for r in piece)  # a few ranges: what batches left
            self._remainders = list(left.take(left.remaining_bytes)) if left else []
        if taken < span and cursor:
            before = cursor.remaining_bytes
            piece += cursor.take(span - taken)
            taken += before - cursor.remaining_bytes
        return piece, self._reserved_bytes(taken)

    def _reserved_bytes(self, span_bytes: int) -> int:
        """What the cap reserves for a chunk of `span_bytes` until its report settles it:
        its batch's most, the limit, whatever the chunk's span."""
        return min(span_bytes, self._spans.payload_bytes) if self._spans is not None else span_bytes

    def first_error(self) -> BaseException | None:
        with self._changed:
            return self._errors[0] if self._errors else None

    def close(self) -> None:
        """End the streams (half-close after the last batch), wait for every connection's
        last word, and give the processes back to the pool (or end those that misbehaved)."""
        if self._closed:
            return
        self._closed = True
        with self._changed:
            self._closing = True
            connections = list(self._connections)
            for connection in connections:
                if connection.spec is None:
                    connection.finished = True  # never began (the prepare failed): idle as it was
            self._changed.notify_all()
        for connection in connections:
            if connection.spec is not None:
                self._send(connection, Close())
        self._reader.join(JOIN_SECONDS)
        if self._reader.is_alive():
            self._abandoned = True
            self.stop.set()
            self._fail(ConnectionFailed("connection processes did not finish in time", "DEADLINE_EXCEEDED"))
            for connection in connections:
                self._processes.discard(connection.worker)  # killed: the reader sees them go
            self._reader.join(JOIN_SECONDS)
            return
        for connection in connections:
            if (connection.finished or connection.failed) and connection.worker.usable:
                self._processes.release(connection.worker)
            else:
                self._processes.discard(connection.worker)


def _order(chunk: Chunk) -> ChunkOrder:
    return ChunkOrder(
        chunk.chunk_id, ranges_to_array(chunk.ranges), chunk.zero_records, chunk.attempt, chunk.settled_below
    )
