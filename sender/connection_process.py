"""The body of one connection process: its own interpreter, guest file handles and stream.

A connection process opens the guest's memory files itself (read-only, checked
to be the very files the migration opened), reads, scans and frames the chunks it
is given and streams them on its own TCP connection. What crosses the process
boundary is small: chunk ids and range tables in; per-chunk reports (counters
and timings), log records and a final word out. Page data never does.

Connection processes live in a pool (sender/connection_pool.py) and serve one
migration's connection at a time, so a migration does not pay for starting them.

Messages on the pipe (tuples):
  parent -> child: ("begin", ConnectionSpec), then
                   ("chunk", chunk_id, ranges (n x 2 uint64 array), zero_records, attempt,
                    settled_below) | ("close",)
                   | ("stop",);
                   ("exit",) between migrations
  child -> parent: ("done", ChunkReport) | ("log", ...), then ("finished", reconnects) or
                   ("failed", kind, message, gRPC status name) ends the migration's part
A closed pipe means the other side died: the child stops, the parent treats the
connection as broken.
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
from dataclasses import dataclass

import grpc
import numpy as np

from livemig.common.allocator import recycle_large_blocks, release_free_memory
from livemig.common.guest_memory import LayoutError, MemoryLayout, open_source_layout
from livemig.common.ranges import MemoryRange
from livemig.common.tls import Security
from livemig.common.transport import channel_options
from livemig.common.worker_processes import PipeSender, ignore_stop_signals, log_through_parent
from livemig.sender.batch_builder import BatchBuilder, Chunk, TransferPlan
from livemig.sender.stream import ChunkReport, ConnectionStream, SourceReadFailed, TransferFailed

log = logging.getLogger("livemig.sender")

PRELOAD = ["livemig.sender.connection_process"]


@dataclass(frozen=True, slots=True)
class SourceRegion:
    """A guest memory file as the migration process opened it (device and inode pin it)."""

    gpa: int
    path: str
    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """Everything a connection process needs, picklable."""

    index: int
    endpoint: str
    security: Security
    session_token: str
    regions: tuple[SourceRegion, ...]
    page_size: int
    chunk_bytes: int
    skip_zero_pages: bool


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


class _PipeReporter:
    def __init__(self, sender: PipeSender) -> None:
        self.sender = sender

    def chunk_done(self, report: ChunkReport) -> None:
        self.sender.send(("done", report))


def describe_error(error: BaseException) -> tuple[str, str, str]:
    """(kind, message, gRPC status name or "") of a connection's failure, picklable."""
    cause = error if isinstance(error, grpc.RpcError) else error.__cause__
    code = cause.code().name if isinstance(cause, grpc.RpcError) else ""
    message = (error.details() or "") if isinstance(error, grpc.RpcError) else str(error)
    return type(error).__name__, message, code


class _Session:
    """One migration's connection inside a (reused) connection process."""

    def __init__(self, spec: ConnectionSpec, sender: PipeSender) -> None:
        self.spec = spec
        self.sender = sender
        self.stop = threading.Event()
        self.inbox: queue.Queue[Chunk | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"connection-{spec.index}", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def handle(self, message: tuple) -> None:
        kind = message[0]
        if kind == "chunk":
            _kind, chunk_id, table, zero_records, attempt, settled_below = message
            ranges = tuple(MemoryRange(gpa, length) for gpa, length in np.asarray(table).tolist())
            self.inbox.put(Chunk(chunk_id, ranges, zero_records, attempt, settled_below))
        elif kind == "close":
            self.inbox.put(None)
        elif kind == "stop":
            self.stop.set()

    def _run(self) -> None:
        spec = self.spec
        layout = None
        channel = None
        try:
            layout = open_pinned_layout(spec.regions, spec.page_size)
            plan = TransferPlan(spec.session_token, layout, spec.page_size, spec.chunk_bytes, spec.skip_zero_pages)
            channel = spec.security.channel(spec.endpoint, channel_options(spec.chunk_bytes, spec.index))
            stream = ConnectionStream(
                spec.index,
                channel,
                spec.session_token,
                BatchBuilder(plan),
                self.inbox,
                _PipeReporter(self.sender),
                self.stop,
            )
            stream.run()
            outcome: tuple = ("finished", stream.reconnects)
        except BaseException as error:
            if not isinstance(error, (TransferFailed, SourceReadFailed, LayoutError, OSError, grpc.RpcError)):
                log.exception("connection %d failed", spec.index)
            outcome = ("failed", *describe_error(error))
        finally:
            if channel is not None:
                channel.close()
            if layout is not None:
                layout.close()
            wipe_text(spec.session_token)  # this process serves other migrations next
        self.sender.send(outcome)  # the last word of this migration: the pool may reuse us now
        # gRPC calls and generators leave reference cycles holding frames: collect them and
        # give the memory back (after the last word, off the migration's critical path).
        gc.collect()
        release_free_memory()


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


def run_connection(log_level: int, pipe) -> None:
    """Process entry point (started by the connection pool through the fork server).

    A connection process serves one migration's connection at a time and then waits
    for the next ("begin", ConnectionSpec); messages that arrive between migrations
    (a late "stop" or "close") are ignored. ("exit",) or a closed pipe ends it.
    """
    ignore_stop_signals()
    not_dumpable()
    recycle_large_blocks()  # one heap, frames reused; trimmed after each migration
    sender = PipeSender(pipe)
    log_through_parent(sender, log_level)
    session: _Session | None = None
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            break  # the sender is gone
        kind = message[0]
        if kind == "begin":
            session = _Session(message[1], sender)
        elif kind == "exit":
            break
        elif session is not None and session.running:
            session.handle(message)
    if session is not None and session.running:
        session.stop.set()
        session.thread.join(10)
    pipe.close()
