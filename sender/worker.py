"""One connection: take chunks, scan them, stream their pages, track acknowledgements.

Each worker owns one TransferPages stream on its own TCP connection for the
whole migration and scans its own chunks, so scanning scales with connections
and the first batch leaves before the rest of memory is scanned (the seed's
design). A bounded window of unacknowledged batches keeps sender memory
independent of guest size.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from livemig.common.guest_memory import MemoryLayout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import GRPC_MESSAGE_PREFIX, encode_batch
from livemig.common.zeropages import EMPTY_RANGES, ZeroScan, count_pages, scan_guest_range, scan_pages
from livemig.sender import metrics
from livemig.sender.stats import ChunkOutcome, MigrationStats

log = logging.getLogger("livemig.sender")

TRANSFER_METHOD = "/livemig.v1.Receiver/TransferPages"
WINDOW_BATCHES = 4
_POLL_SECONDS = 0.2


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """What every worker of one migration shares and never changes."""

    session_token: str
    layout: MemoryLayout
    page_size: int
    chunk_bytes: int
    skip_zero_pages: bool


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One chunk to send: ranges of at most chunk_bytes in all, sent as one batch.
    With zero_records, its zero pages go out as zero ranges: pages that may have
    held data the destination already has (later iterations)."""

    ranges: tuple[MemoryRange, ...]
    zero_records: bool

    @property
    def length(self) -> int:
        return sum(r.length for r in self.ranges)


class TransferFailed(Exception):
    """A stream ended without every batch acknowledged."""


# A broken connection is retried; a refusal by the receiver is not.
RETRIABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)
MAX_RETRIES = 5
RETRY_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# Batches in flight and no acknowledgement for this long: the stream is treated as
# broken (a cut link can leave TCP silent for minutes).
ACK_TIMEOUT_SECONDS = 10.0
# Give up once a connection has made no progress for this long, however it fails.
RETRY_BUDGET_SECONDS = 30.0


@dataclass(slots=True)
class Pending:
    """A batch sent (or about to be) and not acknowledged yet: kept for a resend."""

    chunk_bytes: int
    frame: bytes
    outcome: ChunkOutcome
    holds_window: bool = False
    counted: bool = False


class ConnectionWorker:
    def __init__(
        self,
        index: int,
        channel: grpc.Channel,
        plan: TransferPlan,
        work: queue.Queue[WorkItem | None],
        stats: MigrationStats,
        batch_ids: Iterator[int],
        stop: threading.Event,
        chunk_done: Callable[[int], None],
    ) -> None:
        self.index = index
        self.channel = channel
        self.plan = plan
        self.work = work
        self.stats = stats
        self.batch_ids = batch_ids
        self.stop = stop
        self.chunk_done = chunk_done
        self.error: BaseException | None = None
        self.reconnects = 0
        self._window = threading.Semaphore(WINDOW_BATCHES)
        self._in_flight: dict[int, Pending] = {}
        self._lock = threading.Condition()
        self._epoch = 0  # one per stream; a generator of an older stream stops producing
        self._producing = False
        self._input_done = False
        self._source_error: BaseException | None = None  # reading guest memory failed
        self._last_progress = time.monotonic()
        self._buffer = memoryview(bytearray(plan.chunk_bytes))
        self._region_starts = plan.layout.region_starts()
        self._wire_metric = metrics.CONNECTION_WIRE_BYTES.labels(str(index))

    def run(self) -> None:
        """Thread body. Failures are kept in self.error and stop the whole migration."""
        try:
            self._stream_with_retries()
        except BaseException as error:  # reported through the migration, never lost
            self.error = error
            self.stop.set()
        finally:
            # gRPC's call objects and this worker's generators form reference cycles that
            # only a full collection frees; drop the big buffers now rather than then.
            with self._lock:
                self._in_flight.clear()
            self._buffer = memoryview(b"")

    def _stream_with_retries(self) -> None:
        """One stream at a time; when a connection breaks, a new stream resends every
        unacknowledged batch (writes are idempotent and the receiver ignores batch ids
        it has applied), up to MAX_RETRIES times in a row without progress."""
        failures = 0
        while True:
            try:
                self._stream(self._epoch)
                return
            except grpc.RpcError as error:
                if self._source_error is not None:
                    raise self._source_error from error
                if self.stop.is_set():
                    return  # stopped by a cancel or by another connection's failure: not ours to report
                progressed = getattr(error, "livemig_progressed", False)
                if error.code() not in RETRIABLE:
                    raise
                failures = 1 if progressed else failures + 1
                stalled = time.monotonic() - self._last_progress
                if failures > MAX_RETRIES or stalled > RETRY_BUDGET_SECONDS:
                    raise TransferFailed(
                        f"connection {self.index} lost: {error.code().name}: {error.details()} "
                        f"({failures - 1} reconnects, no progress for {stalled:.0f} s)"
                    ) from error
                with self._lock:
                    self._epoch += 1
                    # The old stream's generator must be parked (at a yield) or gone before
                    # its unacknowledged batches are collected for the resend.
                    self._lock.wait_for(lambda: not self._producing, timeout=5)
                    pending = len(self._in_flight)
                self.reconnects += 1
                log.warning(
                    "connection %d: stream broke (%s: %s); reconnecting (try %d of %d), resending %d batches",
                    self.index,
                    error.code().name,
                    error.details(),
                    failures,
                    MAX_RETRIES,
                    pending,
                )
                if self.stop.wait(RETRY_BACKOFF_SECONDS[min(failures, len(RETRY_BACKOFF_SECONDS)) - 1]):
                    return

    def _stream(self, epoch: int) -> bool:
        transfer = self.channel.stream_stream(
            TRANSFER_METHOD, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
        )
        call = transfer(self._batches(epoch))
        watchdog = threading.Thread(target=self._cancel_on_stop, args=(call,), daemon=True)
        watchdog.start()
        progressed = False
        try:
            for ack in call:
                with self._lock:
                    pending = self._in_flight.pop(ack.batch_id, None)
                if pending is None:
                    raise TransferFailed(f"receiver acknowledged unknown batch {ack.batch_id}")
                progressed = True
                self._last_progress = time.monotonic()
                self.stats.batch_acknowledged()
                if pending.holds_window:
                    self._window.release()
                self._finish_chunk(pending.chunk_bytes)
        except grpc.RpcError as error:
            error.livemig_progressed = progressed
            raise
        if self._source_error is not None:
            raise self._source_error
        with self._lock:
            missing = len(self._in_flight)
        if missing and not self.stop.is_set():
            raise TransferFailed(f"stream ended with {missing} batches unacknowledged")
        return progressed

    def _finish_chunk(self, chunk_bytes: int) -> None:
        self.stats.add_processed(chunk_bytes)
        self.chunk_done(chunk_bytes)

    def _cancel_on_stop(self, call: grpc.Future) -> None:
        """Ends the call when the migration stops, or when acknowledgements stall."""
        while call.running():
            if self.stop.wait(_POLL_SECONDS):
                call.cancel()
                return
            with self._lock:
                waiting = bool(self._in_flight)
            if waiting and time.monotonic() - self._last_progress > ACK_TIMEOUT_SECONDS:
                log.warning("connection %d: no acknowledgement for %.0f s", self.index, ACK_TIMEOUT_SECONDS)
                self._last_progress = time.monotonic() - RETRY_BUDGET_SECONDS / 2  # counts against the budget
                call.cancel()
                return

    def _current(self, epoch: int) -> bool:
        return epoch == self._epoch and not self.stop.is_set()

    def _acquire_window(self, epoch: int) -> bool:
        while not self._window.acquire(timeout=_POLL_SECONDS):
            if not self._current(epoch):
                return False
        if not self._current(epoch):
            self._window.release()
            return False
        return True

    def _set_producing(self, producing: bool) -> None:
        with self._lock:
            self._producing = producing
            self._lock.notify_all()

    def _emit(self, batch_id: int, pending: Pending) -> bytes:
        """Account for a batch about to be written to the current stream."""
        wire = len(pending.frame) + GRPC_MESSAGE_PREFIX
        if not pending.counted:
            pending.counted = True
            self.stats.add_sent(pending.outcome)
            self.stats.batch_in_flight()
        else:
            self.stats.add_resent(wire)
        self._wire_metric.inc(wire)
        return pending.frame

    def _batches(self, epoch: int) -> Iterator[bytes]:
        """Request stream: first every batch a broken stream left unacknowledged, then
        one batch per chunk that has anything to send."""
        try:
            self._set_producing(True)
            with self._lock:
                resend = sorted(self._in_flight.items())
            for batch_id, pending in resend:
                if not self._current(epoch):
                    return
                frame = self._emit(batch_id, pending)
                self._set_producing(False)
                yield frame
                self._set_producing(True)
            while self._current(epoch) and not self._input_done:
                try:
                    item = self.work.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                if item is None:
                    self._input_done = True
                    return
                try:
                    prepared = self._prepare(item)
                except Exception as error:  # e.g. a guest memory file shrank: fatal, not a network fault
                    self._source_error = error
                    self.stop.set()
                    return
                if prepared is None:
                    continue
                batch_id, frame, outcome = prepared
                pending = Pending(item.length, frame, outcome)
                with self._lock:
                    self._in_flight[batch_id] = pending  # from now on a broken stream resends it
                if not self._acquire_window(epoch):
                    return
                pending.holds_window = True
                frame = self._emit(batch_id, pending)
                self._set_producing(False)
                yield frame
                self._set_producing(True)
        finally:
            self._set_producing(False)

    def _prepare(self, item: WorkItem) -> tuple[int, bytes, ChunkOutcome] | None:
        """Read and scan one chunk; returns its batch, or None when nothing needs sending."""
        plan = self.plan
        started = time.monotonic()
        outcome = ChunkOutcome(chunk_bytes=item.length)
        if not plan.skip_zero_pages:
            data_ranges, zero_ranges, payload = self._read_all(item, outcome)
        elif len(item.ranges) > 1 and all(
            r.gpa % plan.page_size == 0 and r.length % plan.page_size == 0 for r in item.ranges
        ):
            data_ranges, zero_ranges, payload = self._scan_gathered(item, outcome)
        else:
            data_ranges, zero_ranges, payload = self._scan_each(item, outcome)
        outcome.transmitted_bytes = item.length - outcome.zero_bytes
        if item.zero_records:
            outcome.zeroed_bytes = outcome.zero_bytes
        else:
            zero_ranges = EMPTY_RANGES
        outcome.scan_seconds = time.monotonic() - started
        if not len(data_ranges) and not len(zero_ranges):
            self.stats.add_sent(outcome)
            self._finish_chunk(item.length)
            return None
        batch_id = next(self.batch_ids)
        frame = encode_batch(plan.session_token, batch_id, data_ranges, payload, zero_ranges)
        outcome.wire_bytes = len(frame) + GRPC_MESSAGE_PREFIX
        outcome.batches = 1
        return batch_id, frame, outcome

    def _read_all(self, item: WorkItem, outcome: ChunkOutcome) -> tuple[np.ndarray, np.ndarray, list[memoryview]]:
        """No skipping: every byte goes out as it is."""
        payload, position = [], 0
        for memory_range in item.ranges:
            buffer = self._buffer[position : position + memory_range.length]
            position += memory_range.length
            self.plan.layout.read_into(memory_range.gpa, buffer)
            payload.append(buffer)
            outcome.normal_pages += count_pages(memory_range.gpa, memory_range.length, self.plan.page_size)
        data = np.array([(r.gpa, r.length) for r in item.ranges], dtype=np.uint64).reshape(-1, 2)
        return data, EMPTY_RANGES, payload

    def _scan_each(self, item: WorkItem, outcome: ChunkOutcome) -> tuple[np.ndarray, np.ndarray, list[memoryview]]:
        """Range by range, skipping file holes unread (large ranges: iteration 0)."""
        data_parts, zero_parts, payload, position = [], [], [], 0
        for memory_range in item.ranges:
            buffer = self._buffer[position : position + memory_range.length]
            position += memory_range.length
            scan = scan_guest_range(self.plan.layout, memory_range.gpa, buffer, self.plan.page_size)
            _count(outcome, scan, memory_range.length)
            data_parts.append(scan.data)
            zero_parts.append(scan.zero)
            base = memory_range.gpa
            payload.extend(buffer[gpa - base : gpa - base + length] for gpa, length in scan.data.tolist())
        return np.concatenate(data_parts), np.concatenate(zero_parts), payload

    def _scan_gathered(self, item: WorkItem, outcome: ChunkOutcome) -> tuple[np.ndarray, np.ndarray, list[memoryview]]:
        """Many page-aligned ranges (dirty pages): read back to back, scanned in one pass."""
        page_size = self.plan.page_size
        position = 0
        for memory_range in item.ranges:
            self.plan.layout.read_into(memory_range.gpa, self._buffer[position : position + memory_range.length])
            position += memory_range.length
        page_gpas = np.concatenate([np.arange(r.gpa, r.end, page_size, dtype=np.uint64) for r in item.ranges])
        scan, offsets = scan_pages(page_gpas, self._buffer[:position], page_size, self._region_starts)
        _count(outcome, scan, position)
        payload = [
            self._buffer[offset : offset + length]
            for offset, length in zip(offsets.tolist(), scan.data[:, 1].tolist(), strict=True)
        ]
        return scan.data, scan.zero, payload


def _count(outcome: ChunkOutcome, scan: ZeroScan, scanned_bytes: int) -> None:
    outcome.scanned_bytes += scanned_bytes
    outcome.zero_bytes += scan.zero_bytes
    outcome.zero_pages += scan.zero_pages
    outcome.normal_pages += scan.normal_pages
