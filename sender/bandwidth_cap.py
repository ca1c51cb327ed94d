"""A migration's bandwidth cap: wire bytes per second of all its connections together.

Links between hosts are shared with production traffic; an operator caps what a
migration may take (QEMU's max-bandwidth, libvirt's migrate-setspeed, KubeVirt's
bandwidthPerMigration). The connections are processes of their own, so the cap is
kept where every chunk is handed out and every report arrives: the transfer pool in
the migration's thread. A chunk is handed out only while the wire bytes reported so
far (resends included) stay within rate x elapsed + one chunk. Chunks are paced
after the fact, so the bytes in flight (connections x chunks each) may run ahead for
a moment; over any stretch longer than that window the average holds. Zero pages
never reach the wire and cost nothing, so a sparse guest is scanned at full speed.

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
        self._since = time.monotonic()
        self._spent = 0  # wire bytes reported since `_since`
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

    def spent(self, wire_bytes: int) -> None:
        """A report: these bytes went on the wire."""
        with self._lock:
            self._spent += wire_bytes

    def delay(self, now: float | None = None) -> float:
        """Seconds until the next chunk may go out (0: now)."""
        with self._lock:
            if not self._rate:
                return 0.0
            now = time.monotonic() if now is None else now
            allowed = self._rate * (now - self._since) + self.burst
            return max(0.0, (self._spent - allowed) / self._rate)

    def wait(self, stop: threading.Event, slice_seconds: float = 0.05) -> bool:
        """Block until the next chunk may go out; False if `stop` was set meanwhile."""
        while (pause := self.delay()) > 0:
            if stop.wait(min(pause, slice_seconds)):
                return False
        return not stop.is_set()
