"""When a data worker's page streams have all closed: the moment to give memory back.

Trimming the heap is explicit in data-plane processes (common/allocator.py). A
session's end is one moment for it (receiver/data_worker.py), but the streams of
a failed or cancelled migration may still be receiving, and holding gRPC's and
our megabyte buffers, when the end arrives: what they free after that trim would
stay in the heap (a worker kept 0.6-0.9 GB after a failed 128-connection
migration). So a worker also trims once no stream has been open for
QUIET_SECONDS, once per quiet spell.
"""

from __future__ import annotations

import threading
import time

QUIET_SECONDS = 0.5


class StreamActivity:
    """Open page streams of one process, and whether memory was given back since."""

    def __init__(self, quiet_seconds: float = QUIET_SECONDS) -> None:
        self.quiet_seconds = quiet_seconds
        self._open = 0
        self._last_closed = time.monotonic()
        self._busy_since_trim = False
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self._open += 1
            self._busy_since_trim = True

    def closed(self) -> None:
        with self._lock:
            self._open -= 1
            self._last_closed = time.monotonic()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return self._open

    def due_for_trim(self) -> bool:
        """No stream open for quiet_seconds, and one was open since the last trim."""
        with self._lock:
            quiet = time.monotonic() - self._last_closed >= self.quiet_seconds
            return self._busy_since_trim and self._open == 0 and quiet

    def trimmed(self) -> None:
        """Memory was given back; with streams still open, the next quiet spell trims again."""
        with self._lock:
            if self._open == 0:
                self._busy_since_trim = False
