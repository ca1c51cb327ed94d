"""Migration statistics, kept true.

Skipped bytes must never count as bytes to transmit, nor inflate the bandwidth:
an operator sizes links and downtime from these figures. So the invariants are
structural: transmitted counts only payload that left in a batch; wire counts
every byte written to the streams; zero counts only bytes found zero and not
sent; totals are the sums of the iterations. Bandwidth is wire bytes over the
time batches were in flight, so neither skipped bytes (which never reach the
wire) nor time spent scanning zero pages (when nothing is in flight) bends it. With
skip_zero_pages off nothing is inspected, so scanned and zero stay 0. With
compression, transmitted stays the raw payload and wire what went on the wire
(compressed); compressed_raw and compressed count only batches sent compressed.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field, fields

from livemig.common.proto import livemig_pb2 as pb
from livemig.sender import metrics
from livemig.sender.chunks import ChunkOutcome, ChunkReport

# Summed chunk by chunk; a batch's compression level is kept as a range instead.
_OUTCOME_FIELDS = tuple(f.name for f in fields(ChunkOutcome) if f.name != "compression_level")


@dataclass(slots=True)
class Counters(ChunkOutcome):
    """Sums of chunk outcomes (an iteration's or the migration's), plus link busy time."""

    busy_seconds: float = 0.0  # time at least one batch was in flight (set from BusyTime)

    def add(self, outcome: ChunkOutcome) -> None:
        for name in _OUTCOME_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(outcome, name))


class BusyTime:
    """Union of [sent, acknowledged] intervals: the time at least one batch was in flight.

    Connection processes report each batch's interval (CLOCK_MONOTONIC is one
    clock for all processes of the host) in no particular order across
    connections; overlapping intervals merge, so N busy connections count the
    wall time once.
    """

    __slots__ = ("_intervals",)

    def __init__(self) -> None:
        self._intervals: list[list[float]] = []  # disjoint, sorted by start

    def add(self, start: float, end: float) -> None:
        if end < start:
            start, end = end, start
        intervals = self._intervals
        index = bisect.bisect_left(intervals, [start, start])
        if index > 0 and intervals[index - 1][1] >= start:
            index -= 1
        stop = index
        while stop < len(intervals) and intervals[stop][0] <= end:
            start = min(start, intervals[stop][0])
            end = max(end, intervals[stop][1])
            stop += 1
        intervals[index:stop] = [[start, end]]

    def seconds(self) -> float:
        return sum(end - start for start, end in self._intervals)


@dataclass(slots=True)
class Iteration:
    index: int
    dirty_bytes: int
    dirty_pages: int
    final: bool
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    counters: Counters = field(default_factory=Counters)
    remaining_bytes: int = 0
    expected_downtime_ms: int = 0

    busy: BusyTime = field(default_factory=BusyTime)

    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def bandwidth(self) -> float:
        """Wire bytes over the time at least one batch was in flight."""
        busy = self.busy.seconds()
        return self.counters.wire_bytes / busy if busy > 0 else 0.0

    def to_proto(self) -> pb.IterationStats:
        c = self.counters
        seconds = self.seconds()
        return pb.IterationStats(
            iteration=self.index,
            dirty_bytes=self.dirty_bytes,
            dirty_pages=self.dirty_pages,
            scanned_bytes=c.scanned_bytes,
            zero_bytes=c.zero_bytes,
            zero_pages=c.zero_pages,
            normal_pages=c.normal_pages,
            transmitted_bytes=c.transmitted_bytes,
            wire_bytes=c.wire_bytes,
            duration_ms=int(seconds * 1000),
            wire_bandwidth_bytes_per_second=self.bandwidth(),
            dirty_rate_bytes_per_second=self.dirty_bytes / seconds if seconds > 0 and self.index else 0.0,
            remaining_bytes=self.remaining_bytes,
            expected_downtime_ms=self.expected_downtime_ms,
            zeroed_bytes=c.zeroed_bytes,
            final=self.final,
        )


class MigrationStats:
    def __init__(self, total_bytes: int, connections: int) -> None:
        self.total_bytes = total_bytes
        self.connections = connections
        self.totals = Counters()
        self.iterations: list[Iteration] = []
        self.processed_bytes = 0
        self.verified = False
        self.resent_batches = 0
        # The lowest and highest level a batch went out compressed at (None: none did yet).
        self.compression_levels: tuple[int, int] | None = None
        self.setup_ms = 0
        self.downtime_ms = 0
        self.verify_ms = 0
        self.bandwidth = 0.0
        self.bandwidth_source = ""
        self.expected_downtime_ms = 0
        self.remaining_bytes = 0
        self._started = time.monotonic()
        self._transfer_started: float | None = None
        self._transfer_ended: float | None = None
        self._ended: float | None = None
        self._busy = BusyTime()
        self._lock = threading.Lock()

    # -- phases ------------------------------------------------------------------

    def setup_done(self) -> None:
        with self._lock:
            self.setup_ms = int((time.monotonic() - self._started) * 1000)

    def begin_iteration(self, dirty_bytes: int, dirty_pages: int, final: bool = False) -> Iteration:
        with self._lock:
            if self._transfer_started is None:
                self._transfer_started = time.monotonic()
            iteration = Iteration(len(self.iterations), dirty_bytes, dirty_pages, final)
            self.iterations.append(iteration)
            return iteration

    def end_iteration(self, remaining_bytes: int = 0, expected_downtime_ms: int = 0) -> Iteration:
        with self._lock:
            iteration = self.iterations[-1]
            iteration.ended = time.monotonic()
            iteration.remaining_bytes = remaining_bytes
            iteration.expected_downtime_ms = expected_downtime_ms
            self.remaining_bytes = remaining_bytes
            self.expected_downtime_ms = expected_downtime_ms
            self._transfer_ended = iteration.ended
        metrics.ITERATIONS.inc()  # every iteration the status counts, the final one included
        return iteration

    def ended(self) -> None:
        with self._lock:
            self._ended = time.monotonic()
            if self._transfer_started is not None and self._transfer_ended is None:
                self._transfer_ended = self._ended

    # -- from the connection processes -----------------------------------------

    def add_chunk(self, report: ChunkReport) -> None:
        """Account for one chunk, acknowledged by the receiver or needing no batch.

        The only place the sender's transfer counters and their Prometheus series
        change: connection processes report each chunk once, after its
        acknowledgement, so nothing unacknowledged is ever counted as sent. That a
        chunk id counts once is the transfer pool's check (sender/transfer.py: only
        an outstanding chunk is counted), not repeated here.
        """
        outcome = report.outcome
        with self._lock:
            iteration = self.iterations[-1] if self.iterations else None
            for counters in (self.totals, iteration.counters if iteration else None):
                if counters is None:
                    continue
                counters.add(outcome)
                counters.wire_bytes += report.resent_wire_bytes
            self.resent_batches += report.resends
            self.processed_bytes += outcome.chunk_bytes
            level = outcome.compression_level
            if level is not None:
                low, high = self.compression_levels or (level, level)
                self.compression_levels = (min(low, level), max(high, level))
            if report.sent_at is not None and report.acked_at is not None:
                self._busy.add(report.sent_at, report.acked_at)
                self.totals.busy_seconds = self._busy.seconds()
                if iteration is not None:
                    iteration.busy.add(report.sent_at, report.acked_at)
                    iteration.counters.busy_seconds = iteration.busy.seconds()
        wire = outcome.wire_bytes + report.resent_wire_bytes
        metrics.SCANNED_BYTES.inc(outcome.scanned_bytes)
        metrics.ZERO_BYTES.inc(outcome.zero_bytes)
        metrics.ZERO_PAGES.inc(outcome.zero_pages)
        metrics.NORMAL_PAGES.inc(outcome.normal_pages)
        metrics.TRANSMITTED_BYTES.inc(outcome.transmitted_bytes)
        metrics.WIRE_BYTES.inc(wire)
        metrics.BATCHES.inc(outcome.batches)
        metrics.COMPRESSED_RAW_BYTES.inc(outcome.compressed_raw_bytes)
        metrics.COMPRESSED_BYTES.inc(outcome.compressed_bytes)
        if wire:
            metrics.CONNECTION_WIRE_BYTES.labels(str(report.connection)).inc(wire)

    # -- derived figures -------------------------------------------------------

    def transfer_seconds(self) -> float:
        with self._lock:
            if self._transfer_started is None:
                return 0.0
            end = self._transfer_ended if self._transfer_ended is not None else time.monotonic()
            return end - self._transfer_started

    def throughput(self) -> float:
        """Wire bytes over transfer time (first chunk taken to last acknowledgement)."""
        seconds = self.transfer_seconds()
        return self.totals.wire_bytes / seconds if seconds > 0 else 0.0

    def to_proto(self) -> pb.MigrationStats:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            t = self.totals
            last = self.iterations[-1] if self.iterations else None
            snapshot = pb.MigrationStats(
                total_bytes=self.total_bytes,
                scanned_bytes=t.scanned_bytes,
                zero_bytes=t.zero_bytes,
                zero_pages=t.zero_pages,
                normal_pages=t.normal_pages,
                transmitted_bytes=t.transmitted_bytes,
                wire_bytes=t.wire_bytes,
                duration_ms=int((end - self._started) * 1000),
                verified=self.verified,
                batches=t.batches,
                processed_bytes=self.processed_bytes,
                connections=self.connections,
                iterations=len(self.iterations),
                remaining_bytes=self.remaining_bytes,
                expected_downtime_ms=self.expected_downtime_ms,
                downtime_ms=self.downtime_ms,
                setup_ms=self.setup_ms,
                bandwidth_bytes_per_second=self.bandwidth,
                bandwidth_source=self.bandwidth_source,
                verify_ms=self.verify_ms,
                zeroed_bytes=t.zeroed_bytes,
                compressed_raw_bytes=t.compressed_raw_bytes,
                compressed_bytes=t.compressed_bytes,
            )
            if self.compression_levels is not None:
                snapshot.lowest_compression_level, snapshot.highest_compression_level = self.compression_levels
            if last is not None and last.index and last.seconds() > 0:
                snapshot.dirty_rate_bytes_per_second = last.dirty_bytes / last.seconds()
        snapshot.transfer_ms = int(self.transfer_seconds() * 1000)
        snapshot.throughput_bytes_per_second = self.throughput()
        return snapshot

    def iterations_proto(self) -> list[pb.IterationStats]:
        with self._lock:
            return [iteration.to_proto() for iteration in self.iterations]
