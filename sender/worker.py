"""One connection: take chunks, scan them, stream non-zero pages, track acknowledgements.

Each worker owns one TransferPages stream on its own TCP connection and scans
its own chunks, so scanning scales with connections and the first batch leaves
before the rest of memory is scanned (the seed's design). A bounded window of
unacknowledged batches keeps sender memory independent of guest size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from livemig.common.guest_memory import MemoryLayout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import GRPC_MESSAGE_PREFIX, encode_batch
from livemig.common.zeropages import count_pages, scan_guest_range
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


class TransferFailed(Exception):
    """A stream ended without every batch acknowledged."""


class ConnectionWorker:
    def __init__(
        self,
        index: int,
        channel: grpc.Channel,
        plan: TransferPlan,
        chunks: queue.Queue[MemoryRange | None],
        stats: MigrationStats,
        batch_ids: Iterator[int],
        stop: threading.Event,
    ) -> None:
        self.index = index
        self.channel = channel
        self.plan = plan
        self.chunks = chunks
        self.stats = stats
        self.batch_ids = batch_ids
        self.stop = stop
        self.error: BaseException | None = None
        self._window = threading.Semaphore(WINDOW_BATCHES)
        self._in_flight: dict[int, int] = {}  # batch id -> chunk bytes it completes
        self._lock = threading.Lock()
        self._buffer = memoryview(bytearray(plan.chunk_bytes))

    def run(self) -> None:
        """Thread body. Failures are kept in self.error and stop the whole migration."""
        try:
            self._stream()
        except BaseException as error:  # reported through the migration, never lost
            self.error = error
            self.stop.set()

    def _stream(self) -> None:
        transfer = self.channel.stream_stream(
            TRANSFER_METHOD, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
        )
        call = transfer(self._batches())
        watchdog = threading.Thread(target=self._cancel_on_stop, args=(call,), daemon=True)
        watchdog.start()
        for ack in call:
            with self._lock:
                chunk_bytes = self._in_flight.pop(ack.batch_id, None)
            if chunk_bytes is None:
                raise TransferFailed(f"receiver acknowledged unknown batch {ack.batch_id}")
            self.stats.add_processed(chunk_bytes)
            self._window.release()
        with self._lock:
            missing = len(self._in_flight)
        if missing and not self.stop.is_set():
            raise TransferFailed(f"stream ended with {missing} batches unacknowledged")

    def _cancel_on_stop(self, call: grpc.Future) -> None:
        while call.running():
            if self.stop.wait(_POLL_SECONDS):
                call.cancel()
                return

    def _acquire_window(self) -> bool:
        while not self._window.acquire(timeout=_POLL_SECONDS):
            if self.stop.is_set():
                return False
        return not self.stop.is_set()

    def _batches(self) -> Iterator[bytes]:
        """Request stream: one batch per chunk that holds any data."""
        while not self.stop.is_set():
            try:
                chunk = self.chunks.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if chunk is None:
                return
            prepared = self._prepare(chunk)
            if prepared is None:
                continue
            frame, outcome = prepared
            if not self._acquire_window():
                return
            self.stats.add_sent(outcome)
            yield frame

    def _prepare(self, chunk: MemoryRange) -> tuple[bytes, ChunkOutcome] | None:
        """Read and scan one chunk; returns its batch, or None when nothing needs sending."""
        plan = self.plan
        buffer = self._buffer[: chunk.length]
        if plan.skip_zero_pages:
            scan = scan_guest_range(plan.layout, chunk.gpa, buffer, plan.page_size)
            data_ranges = scan.data
            scanned, zero_bytes = chunk.length, scan.zero_bytes
            zero_pages, normal_pages = scan.zero_pages, scan.normal_pages
        else:
            plan.layout.read_into(chunk.gpa, buffer)
            data_ranges = np.array([[chunk.gpa, chunk.length]], dtype=np.uint64)
            scanned, zero_bytes, zero_pages = 0, 0, 0
            normal_pages = count_pages(chunk.gpa, chunk.length, plan.page_size)
        if not len(data_ranges):
            self.stats.add_sent(ChunkOutcome(chunk.length, scanned, zero_bytes, zero_pages, 0, 0, 0, 0))
            self.stats.add_processed(chunk.length)
            return None
        payload = [buffer[gpa - chunk.gpa : gpa - chunk.gpa + length] for gpa, length in data_ranges.tolist()]
        batch_id = next(self.batch_ids)
        frame = encode_batch(plan.session_token, batch_id, data_ranges, payload)
        transmitted = chunk.length - zero_bytes
        with self._lock:
            self._in_flight[batch_id] = chunk.length
        outcome = ChunkOutcome(
            chunk_bytes=chunk.length,
            scanned_bytes=scanned,
            zero_bytes=zero_bytes,
            zero_pages=zero_pages,
            normal_pages=normal_pages,
            transmitted_bytes=transmitted,
            wire_bytes=len(frame) + GRPC_MESSAGE_PREFIX,
            batches=1,
        )
        return frame, outcome
