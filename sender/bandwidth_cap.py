"""A migration's bandwidth cap: wire bytes per second of all its connections together.

Links between hosts are shared with production traffic; an operator caps what a
migration may take (QEMU's max-bandwidth, libvirt's migrate-setspeed, KubeVirt's
bandwidthPerMigration). The connections are processes of their own, so the cap is
kept where every chunk is handed out and every report arrives: the transfer pool in
the migration's thread. Handing a chunk out reserves its size (what it could put on
the wire at most); its report settles the reservation to the wire bytes it really
took (resends included). A chunk goes out only when what was reserved and spent,
itself included, stays within rate x elapsed + one chunk (the clock starts at the
first chunk), so the wire never runs ahead of the cap by more than that one chunk,
however many connections there are. Zero pages never
reach the wire: their chunks are given back as soon as they are scanned, so a
sparse guest costs little of the budget (at a very low cap, though, its chunks go
out one at a time).

The rate can change while the migration runs (SetMigrationLimits): the new rate
counts from that moment, not retroactively.
"""

from __future__ import annotations

import threading
import time


class WireBudget:
    def __init__(self, rate: float = 0.0, burst: int = 8 << 20) -> None:
        self.burst = burst
        self._lock = threading.Condition()
        self._rate = 0.0
        self._since: float | None = None  # the first chunk's time (set_rate: now)
        self._spent = 0  # bytes reserved or reported on the wire since `_since`
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """0: no cap. A new rate starts afresh from now."""
        with self._lock:
            self._rate = max(0.0, rate)
            self._since = time.monotonic()
            self._spent = 0
            self._lock.notify_all()

    def reserve(self, chunk_bytes: int) -> None:
        """A chunk handed out: it may put up to this on the wire."""
        with self._lock:
            self._spent += chunk_bytes

    def settle(self, reserved: int, wire_bytes: int) -> None:
        """Its report: what it really took on the wire replaces what was reserved."""
        with self._lock:
            self._spent += wire_bytes - reserved
            self._lock.notify_all()

    def delay(self, next_bytes: int = 0, now: float | None = None) -> float:
        """Seconds until a chunk of next_bytes may go out (0: now)."""
        with self._lock:
            if not self._rate:
                return 0.0
            now = time.monotonic() if now is None else now
            if self._since is None:
                self._since = now
            allowed = self._rate * (now - self._since) + max(self.burst, next_bytes)
            return max(0.0, (self._spent + next_bytes - allowed) / self._rate)

    def wait(self, stop: threading.Event, next_bytes: int = 0, slice_seconds: float = 0.05) -> bool:
        """Block until a chunk of next_bytes may go out; False if `stop` was set meanwhile."""
        while (pause := self.delay(next_bytes)) > 0:
            if stop.wait(min(pause, slice_seconds)):
                return False
        return not stop.is_set()
