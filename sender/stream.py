"""One connection's stream machinery: window, acknowledgements, resend, reconnect.

A ConnectionStream owns one TransferPages stream at a time on its own TCP
connection. It takes chunks from its inbox, has the BatchBuilder make their
frames, keeps at most WINDOW_BATCHES unacknowledged (sender memory stays
independent of guest size), and reports each chunk once, when the receiver has
acknowledged it (or when it needed no batch), to a ChunkReporter. When a
connection breaks, a new stream resends every unacknowledged frame under its
batch id (writes are idempotent and the receiver counts a batch id once).
The next chunk is read, scanned and framed on a thread of its own while the
current batch is being sent (common/read_ahead.py): gRPC's synchronous stream
asks for a message only when the last one is sent, and on a 16-core host that
wait had one connection at 0.9 GiB/s instead of 1.5-1.7. Where the host has
fewer than two cores per connection and nothing is compressed (read_ahead False,
sender/capacity.read_ahead_pays) the chunk is built on the sending thread instead
(common/read_ahead.Inline): nothing would overlap there.

It runs inside a connection process (sender/connection_process.py); nothing here
knows about processes, statistics or metrics.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.read_ahead import Inline, ReadAhead
from livemig.common.retry_budget import RetryBudget
from livemig.common.transfer_rpc import SESSION_METADATA, TRANSFER_METHOD
from livemig.common.wire import GRPC_MESSAGE_PREFIX, encode_heartbeat
from livemig.sender.batch_builder import BatchBuilder, BuiltBatch
from livemig.sender.chunks import Chunk, ChunkOutcome, ChunkReport
from livemig.sender.compression_pace import CompressionPace

log = logging.getLogger("livemig.sender")

WINDOW_BATCHES = 4
_POLL_SECONDS = 0.2

# A broken connection is retried; a refusal by the receiver is not.
RETRIABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)
MAX_RETRIES = 5
RETRY_BACKOFF_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)
# A batch sent and not acknowledged within ack_allowance(its size): the stream is
# treated as broken. Keepalive notices a dead peer or a cut link (~10 s); this
# notices a receiver that answers pings but no longer acknowledges. The allowance
# grows with the batch: many connections share a link, and 32 connections over
# 100 Mbit/s move ~0.4 MB/s each, so an 8 MiB batch takes ~20 s to arrive (with a
# flat 10 s every such migration failed).
ACK_TIMEOUT_SECONDS = 10.0
MIN_ACK_RATE_BYTES_PER_SECOND = 128 << 10
# Give up once a connection has been failing for this long without progress, however
# it fails (common/retry_budget.py: timed from the first failure since the last progress).
RETRY_BUDGET_SECONDS = 30.0


def ack_allowance(frame_bytes: int) -> float:
    """Seconds a sent batch may go unacknowledged: ACK_TIMEOUT_SECONDS, plus its time on
    the wire at MIN_ACK_RATE_BYTES_PER_SECOND (8 MiB: 74 s; 64 KiB: 10.5 s)."""
    return ACK_TIMEOUT_SECONDS + frame_bytes / MIN_ACK_RATE_BYTES_PER_SECOND


class TransferFailed(Exception):
    """A stream ended without every batch acknowledged, or could not be re-established."""


class SourceReadFailed(Exception):
    """Reading guest memory failed (e.g. a memory file shrank): fatal, not a network fault."""


class ChunkReporter(Protocol):
    def chunk_done(self, report: ChunkReport, more_coming: bool) -> None: ...

    def flush(self) -> None: ...


@dataclass(slots=True)
class Pending:
    """A batch sent (or about to be) and not acknowledged yet: kept for a resend."""

    chunk: Chunk
    frame: bytes
    outcome: ChunkOutcome
    holds_window: bool = False
    sent_at: float | None = None
    resent_wire_bytes: int = 0
    resends: int = 0
    remainder: tuple[MemoryRange, ...] = ()  # what the batch left of its chunk (BuiltBatch.remainder)


class ConnectionStream:
    def __init__(
        self,
        index: int,
        connect: Callable[[], grpc.Channel],
        session_token: str,
        builder: BatchBuilder,
        inbox: queue.Queue[Chunk | None],
        reporter: ChunkReporter,
        stop: threading.Event,
        heartbeat_seconds: float = 0.0,
        read_ahead: bool = True,
    ) -> None:
        self.index = index
        # Build the next batch on a thread of its own (read_ahead_pays), or when it is asked for.
        self.read_ahead = read_ahead
        # With nothing to send for this long (a long all-zero scan), say "still here": the
        # receiver closes a stream that carries nothing for its idle timeout (0: never).
        self.heartbeat_seconds = heartbeat_seconds
        # A channel per try: gRPC fails every call on a channel whose last connection
        # attempt failed, at once and with the cached error, while it backs off. One 5 s
        # handshake timeout followed by retries on the same channel spent all 5 tries of
        # a connection in 4 s without another attempt (a 128-connection migration on 2
        # busy cores failed so in CI); a fresh channel connects at once.
        self._connect = connect
        self.channel: grpc.Channel | None = None
        self.session_token = session_token
        self.builder = builder
        self.inbox = inbox
        self.reporter = reporter
        self.stop = stop
        self.reconnects = 0
        self._window = threading.Semaphore(WINDOW_BATCHES)
        compressor = builder.compressor
        self._pace = CompressionPace(compressor, index) if compressor is not None else None
        self._in_flight: dict[int, Pending] = {}
        self._lock = threading.Condition()
        self._epoch = 0  # one per stream; a generator of an older stream stops producing
        self._producing = False
        self._input_done = False
        self._source_error: BaseException | None = None
        self._last_progress = time.monotonic()  # an acknowledgement, or a chunk that needed no batch
        self._last_ack = time.monotonic()  # the watchdog's clock: scanning does not reset it
        self._stream_started = time.monotonic()
        # Chunks read, scanned and framed one ahead of the stream (common/read_ahead.py),
        # shared by the streams of a reconnect: a batch built but not sent stays there.
        self._built: ReadAhead[BuiltBatch | None] | Inline[BuiltBatch | None] | None = None

    def run(self) -> None:
        """Stream until the inbox is closed and every batch acknowledged, or raise."""
        try:
            self._stream_with_retries()
        finally:
            # gRPC's call objects and the generators form reference cycles that only a
            # full collection frees; drop the big frames now rather than then.
            with self._lock:
                self._in_flight.clear()
            if self._built is not None:
                self._built.close(join_seconds=5)
            self._drop_channel()

    def _drop_channel(self) -> None:
        """Close this try's channel (the next try opens its own)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _stream_with_retries(self) -> None:
        """One stream at a time; when a connection breaks, a new stream resends every
        unacknowledged batch, up to MAX_RETRIES times in a row without progress."""
        budget = RetryBudget(MAX_RETRIES, RETRY_BUDGET_SECONDS)
        while True:
            try:
                self._stream(self._epoch)
                return
            except grpc.RpcError as error:
                if self._source_error is not None:
                    raise SourceReadFailed(str(self._source_error)) from self._source_error
                if self.stop.is_set():
                    return  # stopped by a cancel or by another connection's failure: not ours to report
                progressed = getattr(error, "livemig_progressed", False)
                if error.code() not in RETRIABLE:
                    raise
                if progressed:
                    budget.progressed()
                now = time.monotonic()
                if budget.failed(now, self._last_progress):
                    raise TransferFailed(
                        f"connection {self.index} lost: {error.code().name}: {error.details()} "
                        f"({budget.failures - 1} reconnects, failing for {budget.stalled(now):.0f} s without progress)"
                    ) from error
                with self._lock:
                    self._epoch += 1
                    # The old stream's generator must be parked (at a yield) or gone before
                    # its unacknowledged batches are collected for the resend.
                    self._lock.wait_for(lambda: not self._producing, timeout=5)
                    pending = len(self._in_flight)
                self.reconnects += 1
                self._drop_channel()
                log.warning(
                    "connection %d: stream broke (%s: %s); reconnecting (try %d of %d), resending %d batches",
                    self.index,
                    error.code().name,
                    error.details(),
                    budget.failures,
                    MAX_RETRIES,
                    pending,
                )
                if self.stop.wait(RETRY_BACKOFF_SECONDS[min(budget.failures, len(RETRY_BACKOFF_SECONDS)) - 1]):
                    return

    def _stream(self, epoch: int) -> None:
        self._stream_started = time.monotonic()
        if self.channel is None:
            self.channel = self._connect()
        transfer = self.channel.stream_stream(
            TRANSFER_METHOD, request_serializer=None, response_deserializer=pb.PageBatchAck.FromString
        )
        call = transfer(self._batches(epoch), metadata=((SESSION_METADATA, self.session_token),))
        watchdog = threading.Thread(target=self._cancel_on_stop, args=(call,), daemon=True)
        watchdog.start()
        progressed = False
        try:
            for ack in call:
                acked_at = time.monotonic()
                with self._lock:
                    pending = self._in_flight.pop(ack.batch_id, None)
                    more_coming = bool(self._in_flight)  # more acknowledgements are on their way
                if pending is None:
                    raise TransferFailed(f"receiver acknowledged unknown batch {ack.batch_id}")
                progressed = True
                self._last_progress = self._last_ack = acked_at
                if pending.holds_window:
                    self._window.release()
                self.reporter.chunk_done(
                    ChunkReport(
                        self.index,
                        pending.chunk.chunk_id,
                        pending.outcome,
                        pending.sent_at,
                        acked_at,
                        pending.resent_wire_bytes,
                        pending.resends,
                        pending.remainder,
                    ),
                    more_coming,
                )
        except grpc.RpcError as error:
            error.livemig_progressed = progressed
            raise
        finally:
            self.reporter.flush()  # what was acknowledged counts, whatever comes next
        if self._source_error is not None:
            raise SourceReadFailed(str(self._source_error)) from self._source_error
        with self._lock:
            missing = len(self._in_flight)
        if missing and not self.stop.is_set():
            raise TransferFailed(f"stream ended with {missing} batches unacknowledged")

    def _cancel_on_stop(self, call: grpc.Future) -> None:
        """Ends the call when the migration stops, or when acknowledgements stall."""
        while call.running():
            if self.stop.wait(_POLL_SECONDS):
                call.cancel()
                return
            overdue = self._ack_overdue()
            if overdue is not None:
                waited, allowed = overdue
                log.warning(
                    "connection %d: no acknowledgement for %.0f s (its next batch is allowed %.0f s)",
                    self.index,
                    waited,
                    allowed,
                )
                call.cancel()
                return

    def _ack_overdue(self) -> tuple[float, float] | None:
        """(seconds waited, seconds allowed) when the next acknowledgement is overdue. The
        clock starts at the latest of: the last acknowledgement, this stream's start, and the
        first sending of the oldest unacknowledged batch (a long all-zero scan before it,
        with nothing to acknowledge, is not a stall; scanning after it does not reset it)."""
        with self._lock:
            sent = [pending for _id, pending in sorted(self._in_flight.items()) if pending.sent_at is not None]
        if not sent:
            return None
        oldest = sent[0]
        assert oldest.sent_at is not None
        waited = time.monotonic() - max(self._last_ack, self._stream_started, oldest.sent_at)
        allowed = ack_allowance(len(oldest.frame))
        return (waited, allowed) if waited > allowed else None

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

    def _emit(self, pending: Pending) -> bytes:
        """Note a batch about to be written to the current stream."""
        if pending.sent_at is None:
            pending.sent_at = time.monotonic()
        else:
            pending.resent_wire_bytes += len(pending.frame) + GRPC_MESSAGE_PREFIX
            pending.resends += 1
        return pending.frame

    def _batches(self, epoch: int) -> Iterator[bytes]:
        """Request stream: first every batch a broken stream left unacknowledged, then
        one batch per chunk that has anything to send."""
        try:
            self._set_producing(True)
            with self._lock:
                resend = [pending for _id, pending in sorted(self._in_flight.items())]
            for pending in resend:
                if not self._current(epoch):
                    return
                frame = self._emit(pending)
                self._set_producing(False)
                yield frame
                self._set_producing(True)
            if self._built is None:
                if self.read_ahead:
                    self._built = ReadAhead(self._build_batches(), name=f"connection-{self.index}-build")
                else:  # None now and then: this loop still sends heartbeats and notices a stop
                    self._built = Inline(self._build_batches(idle_marks=True))
            last_sent = asked = time.monotonic()
            while self._current(epoch) and not self._input_done:
                try:
                    built = self._built.next(timeout=_POLL_SECONDS)
                except queue.Empty:
                    built = None
                except StopIteration:
                    self._input_done = not self.stop.is_set()
                    return
                if built is None:  # nothing to send yet (a long all-zero scan, or no chunk in hand)
                    if self.heartbeat_seconds and time.monotonic() - last_sent >= self.heartbeat_seconds:
                        last_sent = time.monotonic()
                        self._set_producing(False)
                        yield encode_heartbeat(self.session_token)
                        self._set_producing(True)
                    continue
                chunk = built.chunk
                pending = Pending(chunk, built.frame, built.outcome, remainder=built.remainder)
                with self._lock:
                    self._in_flight[chunk.chunk_id] = pending  # from now on a broken stream resends it
                built_at = time.monotonic()
                if not self._acquire_window(epoch):
                    return
                if self._pace is not None:  # what held this batch back: building it, or the link
                    link_wait = self._built.producer_waited + (time.monotonic() - built_at)
                    self._pace.batch_sent(built_at - asked, link_wait, built.input_wait)
                pending.holds_window = True
                frame = self._emit(pending)
                self._set_producing(False)
                yield frame
                last_sent = asked = time.monotonic()
                self._set_producing(True)
        finally:
            self._set_producing(False)

    def _build_batches(self, idle_marks: bool = False) -> Iterator[BuiltBatch | None]:
        """Chunks from the inbox made into frames, in order, until the inbox closes (or the
        migration stops); chunks with nothing to send are reported here and then. With
        `idle_marks` (built on the sending thread: common/read_ahead.Inline) it yields None
        after each poll of the inbox that found nothing and each chunk that needed no batch,
        so that the sending loop gets its turn."""
        input_wait = 0.0  # since the last batch: chunks came slower than they are built (a cap)
        while not self.stop.is_set():
            waiting = time.monotonic()
            try:
                chunk = self.inbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                input_wait += time.monotonic() - waiting
                if idle_marks:
                    yield None
                continue
            input_wait += time.monotonic() - waiting
            if chunk is None:
                return
            try:
                built = self.builder.build(chunk)
            except Exception as error:  # e.g. a guest memory file shrank: fatal, not a network fault
                self._source_error = error
                self.stop.set()
                return
            if built.frame is None:
                self._last_progress = time.monotonic()  # scanned: progress, with nothing to acknowledge
                report = ChunkReport(self.index, chunk.chunk_id, built.outcome, None, None)
                self.reporter.chunk_done(report, more_coming=not self.inbox.empty())
                if idle_marks:
                    yield None
                continue
            built.input_wait, input_wait = input_wait, 0.0
            yield built
