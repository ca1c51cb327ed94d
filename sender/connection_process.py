"""The body of one connection process: its own interpreter, guest file handles and stream.

A connection process opens the guest's memory files itself (read-only, checked
to be the very files the migration opened), reads, scans and frames the chunks it
is given and streams them on its own TCP connection. What crosses the process
boundary is small: chunk ids and range tables in; per-chunk reports (counters
and timings), log records and a final word out. Page data never does.

Messages on the pipe (tuples):
  parent -> child: ("begin", ConnectionSpec), then
                   ("chunk", chunk_id, ranges (n x 2 uint64 array), zero_records) | ("close",) | ("stop",)
  child -> parent: ("done", ChunkReport) | ("log", ...) | ("finished", reconnects) | ("failed", reason)
A closed pipe means the other side died: the child stops, the parent treats the
connection as broken.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass

import grpc
import numpy as np

from livemig.common.allocator import release_free_memory
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


def _read_commands(pipe, inbox: queue.Queue[Chunk | None], stop: threading.Event) -> None:
    """Chunks into the inbox; stop on ("stop",) or when the parent is gone."""
    while True:
        try:
            message = pipe.recv()
        except (EOFError, OSError):
            stop.set()
            return
        kind = message[0]
        if kind == "chunk":
            _kind, chunk_id, table, zero_records = message
            ranges = tuple(MemoryRange(gpa, length) for gpa, length in np.asarray(table).tolist())
            inbox.put(Chunk(chunk_id, ranges, zero_records))
        elif kind == "close":
            inbox.put(None)
        elif kind == "stop":
            stop.set()
            return


def describe_error(error: BaseException) -> tuple[str, str, str]:
    """(kind, message, gRPC status name or "") of a connection's failure, picklable."""
    cause = error if isinstance(error, grpc.RpcError) else error.__cause__
    code = cause.code().name if isinstance(cause, grpc.RpcError) else ""
    message = (error.details() or "") if isinstance(error, grpc.RpcError) else str(error)
    return type(error).__name__, message, code


def run_connection(index: int, log_level: int, pipe) -> None:
    """Process entry point (started by the transfer pool through the fork server).

    The pool starts connection processes while the receiver prepares the session;
    the first message, ("begin", ConnectionSpec), says where to stream what.
    """
    ignore_stop_signals()
    sender = PipeSender(pipe)
    log_through_parent(sender, log_level)
    try:
        first = pipe.recv()
    except (EOFError, OSError):
        return
    if first[0] != "begin":
        sender.send(("finished", 0))
        return
    spec: ConnectionSpec = first[1]
    stop = threading.Event()
    inbox: queue.Queue[Chunk | None] = queue.Queue()
    layout = None
    channel = None
    try:
        layout = open_pinned_layout(spec.regions, spec.page_size)
        plan = TransferPlan(spec.session_token, layout, spec.page_size, spec.chunk_bytes, spec.skip_zero_pages)
        channel = spec.security.channel(spec.endpoint, channel_options(spec.chunk_bytes, spec.index))
        threading.Thread(target=_read_commands, args=(pipe, inbox, stop), daemon=True).start()
        stream = ConnectionStream(
            spec.index, channel, spec.session_token, BatchBuilder(plan), inbox, _PipeReporter(sender), stop
        )
        stream.run()
        sender.send(("finished", stream.reconnects))
    except BaseException as error:
        if not isinstance(error, (TransferFailed, SourceReadFailed, LayoutError, OSError, grpc.RpcError)):
            log.exception("connection %d failed", spec.index)
        sender.send(("failed", *describe_error(error)))
    finally:
        if channel is not None:
            channel.close()
        if layout is not None:
            layout.close()
        release_free_memory()
        pipe.close()
