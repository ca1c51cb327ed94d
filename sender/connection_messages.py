"""Every message between the migration process and a connection process, one type each.

The transfer pool (sender/transfer.py) and the connection pool send ToConnection
messages; a connection process (sender/connection_process.py) sends
FromConnection messages. Each side handles them with an exhaustive `match`, and a
message of another type raises UnknownMessage: both ends ship together, so one
is a bug, never input. A closed pipe means the other side died: the child stops,
the parent treats the connection as broken.

  parent -> child   Begin, then SendChunks* and Close (or Stop); Exit between migrations
  child -> parent   ChunksDone* and WorkerLog*, then Finished or Failed ends the migration's part

Page data never crosses: chunk ranges go in, counters and timings come out.

Chunks go in and reports come out in groups. On a 2-core host every message costs
wake-ups on both sides (the parent's report reader and migration thread, the
child's pipe reader), and one message per 8 MiB chunk each way was 0.08 CPU s per
GiB in the parent alone: a child holds up to REPORT_GROUP - 1 reports back while
more acknowledgements are on their way, and the parent spends the credit they
return in one message. The parent counts those held reports as outstanding, so
its credit per connection (sender/transfer.py) has room for them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from livemig.common.tls import Security
from livemig.common.worker_processes import WorkerLog
from livemig.sender.chunks import ChunkReport


@dataclass(frozen=True, slots=True)
class SourceRegion:
    """A guest memory file as the migration process opened it (device and inode pin it)."""

    gpa: int
    path: str
    device: int
    inode: int


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """Everything a connection process needs for one migration's connection."""

    index: int
    endpoint: str
    security: Security
    session_token: str
    regions: tuple[SourceRegion, ...]
    page_size: int
    chunk_bytes: int
    skip_zero_pages: bool
    compression: int = 0  # pb.Compression; NONE: every batch raw, framed in place
    heartbeat_seconds: float = 0.0  # a stream with nothing to send says "still here" this often (0: never)
    read_ahead: bool = True  # build the next batch on a thread of its own (sender/capacity.read_ahead_pays)


# -- parent -> child ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """Serve this migration's connection (a pooled process serves one after another)."""

    spec: ConnectionSpec


@dataclass(frozen=True, slots=True)
class ChunkOrder:
    """One chunk to read, scan, frame and send. Its ranges travel as an n x 2 uint64
    array (gpa, length): one buffer to pickle instead of a tuple of objects."""

    chunk_id: int
    ranges: np.ndarray
    zero_records: bool
    attempt: int
    settled_below: int


@dataclass(frozen=True, slots=True)
class SendChunks:
    """Chunks to send, in the order they were handed out (ids increasing)."""

    orders: tuple[ChunkOrder, ...]


@dataclass(frozen=True, slots=True)
class Close:
    """No more chunks: end the stream once every batch is acknowledged."""


@dataclass(frozen=True, slots=True)
class Stop:
    """The migration stops (cancelled, or another connection failed): end at once."""


@dataclass(frozen=True, slots=True)
class Exit:
    """Between migrations: the process ends (the pool retires it)."""


ToConnection = Begin | SendChunks | Close | Stop | Exit


# -- child -> parent ------------------------------------------------------------------


# A connection sends its reports once it holds this many, once nothing it has sent is
# still unacknowledged (or no chunk waits to be built), or once the oldest it holds is
# this old: at full speed about every 4th acknowledgement, on a slow link every one.
REPORT_GROUP = 4
REPORT_DELAY_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ChunksDone:
    """Chunks acknowledged by the receiver (or needing no batch), in the order they were:
    each counted once, now."""

    reports: tuple[ChunkReport, ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The migration's part ended cleanly; the process may serve the next migration."""

    reconnects: int


class FailureKind(enum.Enum):
    """Why a connection gave up (the exception classes of the connection process)."""

    TRANSFER = "transfer"  # the stream broke beyond its retry budget, or ended short
    SOURCE_READ = "source_read"  # reading guest memory failed
    LAYOUT = "layout"  # a guest file could not be opened again, or was replaced
    RECEIVER = "receiver"  # the receiver refused (a gRPC status that is not retried)
    OS = "os"
    INTERNAL = "internal"  # a bug: logged with its traceback in the connection process


@dataclass(frozen=True, slots=True)
class ConnectionFailure:
    """A connection's failure as a value: its kind, its text and the gRPC status behind it."""

    kind: FailureKind
    message: str
    status: str = ""  # grpc.StatusCode name of the cause, "" when none


@dataclass(frozen=True, slots=True)
class Failed:
    """The migration's part ended in failure: the migration fails with `error`."""

    error: ConnectionFailure


FromConnection = ChunksDone | Finished | Failed | WorkerLog
