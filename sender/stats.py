"""Migration statistics, kept true.

The seed PR was held back because skipped bytes were counted as bytes to
transmit and inflated the bandwidth. Here the invariants are structural:
transmitted counts only payload that left in a batch; wire counts every byte
written to the streams; zero counts only bytes found zero and not sent; and
throughput is wire bytes over transfer time. With skip_zero_pages off nothing is
inspected, so scanned and zero stay 0 and every byte is transmitted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from livemig.common.proto import livemig_pb2 as pb
from livemig.sender import metrics


@dataclass(slots=True)
class ChunkOutcome:
    """What one connection worker did with one chunk of guest memory."""

    chunk_bytes: int
    scanned_bytes: int
    zero_bytes: int
    zero_pages: int
    normal_pages: int
    transmitted_bytes: int
    wire_bytes: int
    batches: int


class MigrationStats:
    def __init__(self, total_bytes: int, connections: int) -> None:
        self.total_bytes = total_bytes
        self.connections = connections
        self.scanned_bytes = 0
        self.zero_bytes = 0
        self.zero_pages = 0
        self.normal_pages = 0
        self.transmitted_bytes = 0
        self.wire_bytes = 0
        self.batches = 0
        self.processed_bytes = 0
        self.verified = False
        self._started = time.monotonic()
        self._transfer_started: float | None = None
        self._transfer_ended: float | None = None
        self._ended: float | None = None
        self._lock = threading.Lock()

    def transfer_started(self) -> None:
        with self._lock:
            self._transfer_started = time.monotonic()

    def transfer_ended(self) -> None:
        with self._lock:
            self._transfer_ended = time.monotonic()

    def ended(self) -> None:
        with self._lock:
            self._ended = time.monotonic()

    def add_sent(self, outcome: ChunkOutcome) -> None:
        """Account for a chunk whose batch went onto the wire (not yet acknowledged)."""
        with self._lock:
            self.scanned_bytes += outcome.scanned_bytes
            self.zero_bytes += outcome.zero_bytes
            self.zero_pages += outcome.zero_pages
            self.normal_pages += outcome.normal_pages
            self.transmitted_bytes += outcome.transmitted_bytes
            self.wire_bytes += outcome.wire_bytes
            self.batches += outcome.batches
        metrics.SCANNED_BYTES.inc(outcome.scanned_bytes)
        metrics.ZERO_BYTES.inc(outcome.zero_bytes)
        metrics.ZERO_PAGES.inc(outcome.zero_pages)
        metrics.NORMAL_PAGES.inc(outcome.normal_pages)
        metrics.TRANSMITTED_BYTES.inc(outcome.transmitted_bytes)
        metrics.WIRE_BYTES.inc(outcome.wire_bytes)
        metrics.BATCHES.inc(outcome.batches)

    def add_processed(self, chunk_bytes: int) -> None:
        """A chunk is fully handled: acknowledged by the receiver, or all zero and skipped."""
        with self._lock:
            self.processed_bytes += chunk_bytes

    def transfer_seconds(self) -> float:
        with self._lock:
            if self._transfer_started is None:
                return 0.0
            end = self._transfer_ended if self._transfer_ended is not None else time.monotonic()
            return end - self._transfer_started

    def throughput(self) -> float:
        seconds = self.transfer_seconds()
        return self.wire_bytes / seconds if seconds > 0 else 0.0

    def to_proto(self) -> pb.MigrationStats:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            duration_ms = int((end - self._started) * 1000)
            snapshot = pb.MigrationStats(
                total_bytes=self.total_bytes,
                scanned_bytes=self.scanned_bytes,
                zero_bytes=self.zero_bytes,
                zero_pages=self.zero_pages,
                normal_pages=self.normal_pages,
                transmitted_bytes=self.transmitted_bytes,
                wire_bytes=self.wire_bytes,
                duration_ms=duration_ms,
                verified=self.verified,
                batches=self.batches,
                processed_bytes=self.processed_bytes,
                connections=self.connections,
            )
        snapshot.transfer_ms = int(self.transfer_seconds() * 1000)
        snapshot.throughput_bytes_per_second = self.throughput()
        return snapshot
