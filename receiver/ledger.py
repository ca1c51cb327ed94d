"""What the data workers did for one session, kept by the control process alone.

Data workers write batches into destination memory and report each one (through
their pipes) before they acknowledge it. A sender that lost a stream resends its
unacknowledged batches, possibly to another worker (a restarted one): the ledger
counts each batch id once, so the totals checked at completion are true
whichever process wrote what. It also knows how many streams of the session are
open on each worker and when the session last saw traffic: the idle timeout
measures the sender's silence, and an open stream is not silence.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict


class SessionLedger:
    """Totals of one session, deduplicated by batch id; thread-safe."""

    def __init__(self) -> None:
        self.written_bytes = 0
        self.zeroed_bytes = 0
        self.batches = 0
        self.last_activity = time.monotonic()
        self._applied: set[int] = set()
        self._streams: defaultdict[int, int] = defaultdict(int)  # worker index -> open streams
        self._lock = threading.Lock()

    def record_batch(self, batch_id: int, written: int, zeroed: int) -> bool:
        """A worker applied a batch. False for a batch id already counted; id 0 ("no id")
        always counts."""
        with self._lock:
            self.last_activity = time.monotonic()
            if batch_id:
                if batch_id in self._applied:
                    return False
                self._applied.add(batch_id)
            self.written_bytes += written
            self.zeroed_bytes += zeroed
            self.batches += 1
            return True

    def stream_changed(self, worker: int, delta: int) -> None:
        with self._lock:
            self._streams[worker] = max(0, self._streams[worker] + delta)
            self.last_activity = time.monotonic()

    def worker_gone(self, worker: int) -> None:
        """A dead worker's streams are closed (the sender reconnects or fails)."""
        with self._lock:
            self._streams.pop(worker, None)
            self.last_activity = time.monotonic()

    def totals(self) -> tuple[int, int]:
        """(written bytes, batches), each batch id counted once."""
        with self._lock:
            return self.written_bytes, self.batches

    def idle_seconds(self) -> float | None:
        """Seconds without traffic and without an open stream; None while a stream is open."""
        with self._lock:
            if any(self._streams.values()):
                return None
            return time.monotonic() - self.last_activity
