"""The body of one connection process: its own interpreter, guest file handles and stream.

A connection process opens the guest's memory files itself (read-only, checked
to be the very files the migration opened), reads, scans and frames the chunks it
is given and streams them on its own TCP connection. What crosses the process
boundary is small: chunk ids and range tables in; per-chunk reports (counters
and timings), log records and a final word out. Page data never does.

Connection processes live in a pool (sender/connection_pool.py) and serve one
migration's connection at a time, so a migration does not pay for starting them.

The messages on the pipe are in sender/connection_messages.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np

from livemig.common.allocator import recycle_large_blocks
from livemig.common.guest_memory import LayoutError, MemoryLayout, open_source_layout
from livemig.common.ranges import ranges_from_array
from livemig.common.stream_activity import QUIET_SECONDS, StreamActivity, give_back_if_grown, give_back_if_quiet
from livemig.common.transport import channel_options
from livemig.common.worker_processes import PipeSender, UnknownMessage, ignore_stop_signals, log_through_parent
from livemig.sender.batch_builder import BatchBuilder, TransferPlan
from livemig.sender.chunks import Chunk, ChunkReport
from livemig.sender.connection_messages import (
    REPORT_DELAY_SECONDS,
    REPORT_GROUP,
    Begin,
    ChunksDone,
    Close,
    ConnectionFailure,
    ConnectionSpec,
    Exit,
    Failed,
    FailureKind,
    Finished,
    FromConnection,
    SendChunks,
    SourceRegion,
    Stop,
    ToConnection,
)
from livemig.sender.stream import ConnectionStream, SourceReadFailed, TransferFailed

log = logging.getLogger("livemig.sender")

PRELOAD = ["livemig.sender.connection_process"]


def source_regions(layout: MemoryLayout) -> tuple[SourceRegion, ...]:
    regions = []
    for region in layout.regions:
        stat = os.fstat(region.fd)
        regions.append(SourceRegion(region.gpa, region.path, stat.st_dev, stat.st_ino))
    return tuple(regions)


def open_pinned_layout(regions: tuple[SourceRegion, ...], page_size: int) -> MemoryLayout:
    """Open the guest files again and refuse any that is not the file the migration opened."""
    layout = open_source_layout([(r.gpa, r.path) for r in regions], page_size)
    for region, source in zip(sorted(layout.regions, key=lambda r: r.gpa), regions, strict=True):
        stat = os.fstat(region.fd)
        if (stat.st_dev, stat.st_ino) != (source.device, source.inode):
            layout.close()
            raise LayoutError(f"{source.path} was replaced after the migration started")
    return layout


class GroupedReporter:
    """The stream's ChunkReporter: chunk reports go to the migration process in groups
    (sender/connection_messages.py says why and when). The acknowledgement thread and
    the build thread (chunks with nothing to send) both report."""

    def __init__(self, to_parent: PipeSender, clock: Callable[[], float] = time.monotonic) -> None:
        self.to_parent = to_parent
        self._clock = clock
        self._lock = threading.Lock()
        self._held: list[ChunkReport] = []
        self._oldest = 0.0

    def chunk_done(self, report: ChunkReport, more_coming: bool) -> None:
        """`more_coming`: the caller will report again soon (batches are still in flight,
        or chunks wait to be built); otherwise the group goes now."""
        with self._lock:
            now = self._clock()
            if not self._held:
                self._oldest = now
            self._held.append(report)
            if more_coming and len(self._held) < REPORT_GROUP and now - self._oldest < REPORT_DELAY_SECONDS:
                return
            reports, self._held = self._held, []
            self.to_parent.send(ChunksDone(tuple(reports)))  # under the lock: groups stay in order

    def flush(self) -> None:
        """Send what is held (the stream ended or broke, or the connection's part ends)."""
        with self._lock:
            reports, self._held = self._held, []
            if reports:
                self.to_parent.send(ChunksDone(tuple(reports)))


# The failures a connection expects (each a FailureKind); anything else is a bug.
_EXPECTED_FAILURES: tuple[tuple[type[BaseException], FailureKind], ...] = (
    (TransferFailed, FailureKind.TRANSFER),
    (SourceReadFailed, FailureKind.SOURCE_READ),
    (LayoutError, FailureKind.LAYOUT),
    (grpc.RpcError, FailureKind.RECEIVER),
    (OSError, FailureKind.OS),
)


def describe_failure(error: BaseException) -> ConnectionFailure:
    """A connection's failure as a picklable value: kind, text and the gRPC status behind it."""
    kind = next((kind for cls, kind in _EXPECTED_FAILURES if isinstance(error, cls)), FailureKind.INTERNAL)
    cause = error if isinstance(error, grpc.RpcError) else error.__cause__
    status = cause.code().name if isinstance(cause, grpc.RpcError) else ""
    message = (error.details() or "") if isinstance(error, grpc.RpcError) else str(error)
    return ConnectionFailure(kind, message, status)


class _ConnectionRun:
    """One migration's connection inside a (reused) connection process: its thread runs
    the stream, the process's main loop feeds it messages."""

    def __init__(self, spec: ConnectionSpec, to_parent: PipeSender, activity: StreamActivity) -> None:
        self.spec = spec
        self.to_parent = to_parent
        self.activity = activity
        activity.opened()
        self.stop = threading.Event()
        self.inbox: queue.Queue[Chunk | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"connection-{spec.index}", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def handle(self, message: SendChunks | Close | Stop) -> None:
        match message:
            case SendChunks(orders):
                for order in orders:
                    ranges = tuple(ranges_from_array(np.asarray(order.ranges)))
                    chunk = Chunk(order.chunk_id, ranges, order.zero_records, order.attempt, order.settled_below)
                    self.inbox.put(chunk)
            case Close():
                self.inbox.put(None)
            case Stop():
                self.stop.set()
            case _:
                raise UnknownMessage(message)

    def _run(self) -> None:
        spec = self.spec
        layout = None
        reporter = GroupedReporter(self.to_parent)
        try:
            layout = open_pinned_layout(spec.regions, spec.page_size)
            plan = TransferPlan(
                spec.session_token, layout, spec.page_size, spec.chunk_bytes, spec.skip_zero_pages, spec.compression
            )
            options = channel_options(spec.chunk_bytes, spec.index)
            stream = ConnectionStream(
                spec.index,
                lambda: spec.security.channel(spec.endpoint, options),
                spec.session_token,
                BatchBuilder(plan),
                self.inbox,
                reporter,
                self.stop,
                spec.heartbeat_seconds,
                spec.read_ahead,
            )
            stream.run()
            outcome: FromConnection = Finished(stream.reconnects)
        except BaseException as error:
            failure = describe_failure(error)
            if failure.kind is FailureKind.INTERNAL:
                log.exception("connection %d failed", spec.index)
            outcome = Failed(failure)
        finally:
            reporter.flush()  # before the last word: every chunk reported counts
            if layout is not None:
                layout.close()
            wipe_text(spec.session_token)  # this process serves other migrations next
        self.to_parent.send(outcome)  # the last word of this migration: the pool may reuse us now
        # gRPC calls and generators leave reference cycles holding frames: collect them (after
        # the last word, off the migration's critical path). The freed frames stay for the next
        # migration and go back after a quiet spell (common/stream_activity.py), or now where
        # the heap has grown past what one needs.
        gc.collect()
        give_back_if_grown(self.activity)
        self.activity.closed()


def wipe_text(text: str) -> None:
    """Overwrite an ASCII str's characters in place with NULs. A pooled connection process
    serves one migration after another: the previous migration's session token stayed
    readable in its heap (issue 20). Only for strings this process made for itself and
    no longer uses (the token of a migration that ended)."""
    if not text or not text.isascii():
        return
    # A compact ASCII str keeps its characters (and a NUL) at the end of its object.
    ctypes.memset(id(text) + sys.getsizeof(text) - len(text) - 1, 0, len(text))


def not_dumpable() -> None:
    """No core dump, and no ptrace or /proc/PID/mem for other processes of this user: the
    heap holds guest bytes and tokens of earlier migrations (freed blocks are reused,
    not cleared) that nobody else on the host should read."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


PR_SET_DUMPABLE = 4


def run_connection(log_level: int, pipe, keep_buffers_seconds: float = QUIET_SECONDS) -> None:
    """Process entry point (started by the connection pool through the fork server).

    A connection process serves one migration's connection at a time and then waits
    for the next Begin; messages that arrive between migrations (a late Stop or
    Close) are ignored. Exit or a closed pipe ends it. The frames it freed are kept for
    the next migration and go back after `keep_buffers_seconds` without one
    (--keep-buffers-seconds, common/stream_activity.py).
    """
    ignore_stop_signals()
    not_dumpable()
    recycle_large_blocks()  # one heap, frames reused; trimmed once no migration has come for a while
    to_parent = PipeSender(pipe)
    log_through_parent(to_parent, log_level)
    activity = StreamActivity(keep_buffers_seconds)
    run: _ConnectionRun | None = None
    while True:
        try:
            if not pipe.poll(activity.seconds_until_due()):
                give_back_if_quiet(activity)  # no migration for a while: the frames go back
                continue
            message: ToConnection = pipe.recv()
        except (EOFError, OSError):
            break  # the sender is gone
        if isinstance(message, Exit):
            break
        run = serve(message, run, to_parent, activity)
    if run is not None and run.running:
        run.stop.set()
        run.thread.join(10)
    pipe.close()


def serve(
    message: ToConnection, run: _ConnectionRun | None, to_parent: PipeSender, activity: StreamActivity
) -> _ConnectionRun | None:
    """Handle one message from the migration process; returns the migration run now served."""
    match message:
        case Begin(spec):
            return _ConnectionRun(spec, to_parent, activity)
        case SendChunks() | Close() | Stop():
            if run is not None and run.running:
                run.handle(message)
            return run
        case Exit():
            return run  # the caller ends the process
        case _:
            raise UnknownMessage(message)
