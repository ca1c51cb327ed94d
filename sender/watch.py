"""Admission of WatchMigration streams.

Each watch holds one of the control server's threads for as long as it streams.
Bounding watches per client and in total, below the number of threads, keeps
threads free for health checks and GetMigration, ListMigrations, CancelMigration
and StartMigration however many people follow migrations; the one watch too many
is refused (RESOURCE_EXHAUSTED) rather than queued.
"""

from __future__ import annotations

import threading
from collections import Counter

from livemig.sender.errors import Reason, SenderError


class WatchGate:
    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._open: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, client: str) -> None:
        """Take a watch slot for `client` (its certificate identity or address);
        raises SenderError(BUSY) when none is free. Pair with release()."""
        with self._lock:
            if self._open[client] >= self.max_per_client:
                raise SenderError(
                    Reason.BUSY, f"this client already follows {self.max_per_client} migrations; close a watch first"
                )
            if sum(self._open.values()) >= self.max_total:
                raise SenderError(Reason.BUSY, f"the sender serves at most {self.max_total} watch streams; try later")
            self._open[client] += 1

    def release(self, client: str) -> None:
        with self._lock:
            self._open[client] -= 1
            if not self._open[client]:
                del self._open[client]

    def open_streams(self) -> int:
        with self._lock:
            return sum(self._open.values())
