"""The guest's dirty rate, smoothed over time rather than over iterations.

Late pre-copy iterations last 1-14 ms, and the dirty bytes collected over such a
sliver swing wildly: one steady 32 MiB/s writer read as 1.9 to 305 MB/s. So the rate
is the dirty bytes of the collections within the last WINDOW_SECONDS (at least the
latest one) over the time they cover: each collection says what the guest dirtied
since the previous one.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW_SECONDS = 2.0


class DirtyRate:
    def __init__(self, window_seconds: float = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._samples: deque[tuple[float, float, int]] = deque()  # (start, end, bytes)
        self._since = time.monotonic()

    def restart(self, now: float | None = None) -> None:
        """The dirty log was cleared: what comes next was dirtied from now on."""
        self._since = time.monotonic() if now is None else now

    def collected(self, dirty_bytes: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((self._since, now, dirty_bytes))
        self._since = now
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_seconds:
            self._samples.popleft()

    @property
    def value(self) -> float:
        """Bytes per second over the window; 0 before the first collection."""
        if not self._samples:
            return 0.0
        covered = self._samples[-1][1] - self._samples[0][0]
        return sum(sample[2] for sample in self._samples) / covered if covered > 0 else 0.0
