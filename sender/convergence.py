"""When to switch over: the downtime estimate and the decision, from measured parts.

Expected downtime for the bytes still dirty = time to read and scan them (at the
measured per-connection preparation rate, times connections) + time to send what
of them is expected to be non-zero (at the wire bandwidth) + one control round
trip. The bandwidth is measured as wire bytes over the time batches were in
flight, so neither skipped zero pages (never on the wire) nor scan-bound stretches
(nothing in flight) bend it; a user-set available bandwidth replaces it (QEMU's
avail-switchover-bandwidth), and the statistics say which one was used.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from livemig.sender.stats import Counters


class Decision(enum.Enum):
    CONTINUE = "continue"
    SWITCHOVER = "switchover"
    FORCE_SWITCHOVER = "force"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class ConvergencePolicy:
    downtime_ms: int
    timeout_ms: int  # 0: none
    force_on_timeout: bool
    max_iterations: int
    available_bandwidth: float  # 0: measured
    connections: int

    def bandwidth(self, totals: Counters) -> tuple[float, str]:
        if self.available_bandwidth > 0:
            return self.available_bandwidth, "available"
        if totals.busy_seconds > 0 and totals.wire_bytes:
            return totals.wire_bytes / totals.busy_seconds, "measured"
        return 0.0, "measured"

    def expected_downtime_ms(
        self, remaining_bytes: int, totals: Counters, latest: Counters, round_trip_seconds: float
    ) -> tuple[int, float, str]:
        """(expected ms, bandwidth used, its source) for pausing now."""
        bandwidth, source = self.bandwidth(totals)
        if remaining_bytes == 0:
            return int(round_trip_seconds * 1000), bandwidth, source
        prepare_rate = totals.chunk_bytes / totals.scan_seconds * self.connections if totals.scan_seconds > 0 else 0.0
        # Share of prepared bytes that went out as payload, from the latest pass with
        # data (zero pages found there are likely zero again), wire framing included.
        sample = latest if latest.chunk_bytes else totals
        nonzero_share = sample.transmitted_bytes / sample.chunk_bytes if sample.chunk_bytes else 1.0
        framing = sample.wire_bytes / sample.transmitted_bytes if sample.transmitted_bytes else 1.0
        seconds = round_trip_seconds
        seconds += remaining_bytes / prepare_rate if prepare_rate > 0 else 0.0
        wire = remaining_bytes * nonzero_share * framing
        seconds += wire / bandwidth if bandwidth > 0 else float("inf") if wire else 0.0
        return (int(seconds * 1000) if seconds != float("inf") else 2**63 - 1), bandwidth, source

    def decide(self, iterations_done: int, expected_ms: int, elapsed_ms: int) -> Decision:
        if expected_ms <= self.downtime_ms:
            return Decision.SWITCHOVER
        out_of_time = self.timeout_ms and elapsed_ms >= self.timeout_ms
        if out_of_time or iterations_done >= self.max_iterations:
            return Decision.FORCE_SWITCHOVER if self.force_on_timeout else Decision.GIVE_UP
        return Decision.CONTINUE
