"""What the sender's operator decides, never a request: where guest memory and dirty
maps may live, how many watch streams the control API serves, and how many
migrations and connection processes run at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from livemig.common.stream_activity import QUIET_SECONDS
from livemig.sender.defaults import (
    DEFAULT_CHUNK_SPAN_FACTOR,
    DEFAULT_MAX_MIGRATIONS,
    DEFAULT_MAX_WATCH_STREAMS,
    DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT,
)
from livemig.sender.guest import GuestHooks


@dataclass(frozen=True, slots=True)
class SenderConfig:
    hooks: GuestHooks = field(default_factory=GuestHooks)
    # Region files must resolve into one of these directories; empty: anywhere the
    # sender can read (the trust model in docs/reliability.md says what that means).
    memory_roots: tuple[Path, ...] = ()
    # Dirty maps are `<dir>/<region file name>.dirty`; None: the `<region>.dirty` sibling.
    dirty_log_dir: Path | None = None
    # Where QEMU guests' QMP sockets may live: a request's qmp_socket is a name under
    # it (sender/qmp_guest.py); None: QMP guest control is off.
    qmp_dir: Path | None = None
    # Records of paused guests (sender/pause_records.py); None: none are kept.
    state_dir: Path | None = None
    # The bandwidth cap of a migration whose request sets none (wire bytes/s); 0: none.
    max_bandwidth: float = 0.0
    max_watch_streams: int = DEFAULT_MAX_WATCH_STREAMS
    max_watch_streams_per_client: int = DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT
    # Running migrations, and their connections (processes) together; 0: 32 per core,
    # at least 128 (sender/capacity.py).
    max_migrations: int = DEFAULT_MAX_MIGRATIONS
    max_connections: int = 0
    # A chunk of sparse memory covers up to this many times the batch limit (sender/chunk_spans.py).
    chunk_span_factor: int = DEFAULT_CHUNK_SPAN_FACTOR
    # A connection process gives the buffers it freed back after this long without a
    # migration (common/stream_activity.py); until then the next migration reuses them.
    keep_buffers_seconds: float = QUIET_SECONDS
