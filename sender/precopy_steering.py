"""Steering a live pre-copy between iterations: the smoothed dirty rate, auto-converge's
throttle, the convergence forecast, the stall timeout and the pace of iteration logs.

The migration's state machine (sender/migration.py) asks this object after each
iteration what changed and whether pre-copy is stuck; it owns none of the guest's
pause or the transfer. Kept apart so the state machine reads as states and the
policy as policy (issue 24).
"""

from __future__ import annotations

import logging
import time

from livemig.common.human import format_bytes
from livemig.sender import metrics
from livemig.sender.convergence import convergence_forecast
from livemig.sender.dirty_rate import DirtyRate
from livemig.sender.pause_records import PauseRecords
from livemig.sender.throttle import AutoConverge, NoThrottle, Throttle

LOG_INTERVAL_SECONDS = 1.0  # iteration log lines at most this often


class PrecopySteering:
    def __init__(
        self,
        migration_id: str,
        log: logging.LoggerAdapter | logging.Logger,
        downtime_ms: int,
        auto_converge: bool,
        stall_timeout_ms: int,
        pause_records: PauseRecords,
    ) -> None:
        self.migration_id = migration_id
        self._log = log
        self.downtime_ms = downtime_ms
        self.auto_converge = auto_converge
        self.stall_timeout_ms = stall_timeout_ms
        self._pause_records = pause_records
        self.dirty_rate = DirtyRate()  # smoothed over time, not over iterations
        self._policy = AutoConverge()
        self._throttle: Throttle = NoThrottle()
        self._guest = None
        self.throttle_percent = 0
        self.forecast = ""
        self._lowest_remaining: int | None = None
        self._lowest_at = 0.0
        self._logged_at = 0.0
        self._unlogged = 0

    def start(self, guest) -> None:
        """Pre-copy begins: the dirty log was just cleared; the guest may be throttled."""
        self.dirty_rate.restart()
        self._guest = guest
        if self.auto_converge:
            self._throttle = guest.throttle()

    def collected(self, dirty_bytes: int) -> None:
        self.dirty_rate.collected(dirty_bytes)

    def iteration_ended(self, index: int, bandwidth: float, fixed_seconds: float, overhead_seconds: float) -> None:
        """Auto-converge and the forecast, from the iteration that just ended."""
        if self.auto_converge and index:
            self._steer(self.dirty_rate.value, bandwidth)
        if index >= 2 and not self.forecast:
            self._say_forecast(self.dirty_rate.value, bandwidth, fixed_seconds, overhead_seconds)

    def _steer(self, dirty_rate: float, bandwidth: float) -> None:
        percent = self._policy.after_iteration(dirty_rate, bandwidth)
        if percent == self.throttle_percent:
            return
        self._log.info(
            "migration %s: auto-converge throttles the guest to %d %% (dirty %s/s, link %s/s)",
            self.migration_id,
            percent,
            format_bytes(dirty_rate),
            format_bytes(bandwidth),
        )
        if percent and not self.throttle_percent and (record := self._guest.pause_record()) is not None:
            # A sender that dies mid-cycle must not leave the guest stopped: the record
            # lets the next one (or `livemig guest resume`) continue it.
            self._pause_records.write(record)
        self.throttle_percent = percent
        self._throttle.set(percent)
        metrics.throttle_changed(self.migration_id, percent)

    def release(self) -> None:
        """End the throttle with the guest running (before the pause, and at every end)."""
        self._throttle.release()
        self._throttle = NoThrottle()
        if self.throttle_percent:
            self.throttle_percent = 0
            metrics.throttle_changed(self.migration_id, 0)
            if self._guest is not None and self._guest.state != "paused":  # a pause keeps its record
                self._pause_records.remove(self.migration_id)

    def _say_forecast(self, dirty_rate: float, bandwidth: float, fixed: float, overhead: float) -> None:
        forecast = convergence_forecast(self.downtime_ms, dirty_rate, bandwidth, fixed, overhead)
        if forecast:
            if self.auto_converge:
                forecast += " (auto-converge is on: the throttle may still bring it there)"
            self.forecast = forecast
            self._log.warning("migration %s: %s", self.migration_id, forecast)
            metrics.will_not_converge(self.migration_id)

    def stalled(self, remaining: int) -> bool:
        """No new low of the dirty bytes left for stall_timeout_ms (KubeVirt's progress timeout)."""
        now = time.monotonic()
        if self._lowest_remaining is None or remaining < self._lowest_remaining:
            self._lowest_remaining, self._lowest_at = remaining, now
            return False
        return bool(self.stall_timeout_ms) and (now - self._lowest_at) * 1000 >= self.stall_timeout_ms

    def log_now(self) -> bool:
        """Whether this iteration gets a log line (one a second); says how many were not logged."""
        now = time.monotonic()
        if now - self._logged_at < LOG_INTERVAL_SECONDS:
            self._unlogged += 1
            return False
        if self._unlogged:
            self._log.info(
                "migration %s: %d iterations not logged (one line a second)", self.migration_id, self._unlogged
            )
        self._logged_at, self._unlogged = now, 0
        return True
