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
import math
from dataclasses import dataclass

from livemig.common.human import format_bytes
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
    max_bandwidth: float = 0.0  # the cap (sender/bandwidth_cap.py): no estimate assumes more

    def bandwidth(self, sample: Counters) -> tuple[float, str]:
        bandwidth, source = self._uncapped(sample)
        if self.max_bandwidth > 0 and (bandwidth <= 0 or bandwidth > self.max_bandwidth):
            return self.max_bandwidth, "cap"
        return bandwidth, source

    def _uncapped(self, sample: Counters) -> tuple[float, str]:
        if math.isfinite(self.available_bandwidth) and self.available_bandwidth > 0:
            return self.available_bandwidth, "available"
        if sample.busy_seconds > 0 and sample.wire_bytes:
            return sample.wire_bytes / sample.busy_seconds, "measured"
        return 0.0, "measured"

    def expected_downtime_ms(
        self,
        remaining_bytes: int,
        sample: Counters,
        chunk_bytes: int,
        round_trip_seconds: float,
        verify_seconds: float = 0.0,
    ) -> tuple[int, float, str]:
        """(expected ms, bandwidth used, its source) for pausing now.

        `sample` is the latest pass over dirty pages (scattered pages cost more per
        byte than iteration 0's bulk ranges), or all passes so far before there is one.
        `verify_seconds`: what the digests of a verified migration will take (both ends,
        one after the other), all of it downtime.

        The floor with nothing dirty is two round trips (the pause and final collection,
        the completion call), measured on PrepareMigration: that call also creates the
        destination files, so on loopback the floor reads a few milliseconds where the
        network alone would be a fraction of one.
        """
        bandwidth, source = self.bandwidth(sample)
        # Pause, final collection and the completion call: about two round trips.
        seconds = 2 * round_trip_seconds + verify_seconds
        if remaining_bytes:
            workers = max(1, min(self.connections, -(-remaining_bytes // max(chunk_bytes, 1))))
            prepare_rate = sample.chunk_bytes / sample.scan_seconds * workers if sample.scan_seconds > 0 else 0.0
            # Share of prepared bytes that went out as payload (zero pages found there
            # are likely zero again), wire framing included.
            nonzero_share = sample.transmitted_bytes / sample.chunk_bytes if sample.chunk_bytes else 1.0
            framing = sample.wire_bytes / sample.transmitted_bytes if sample.transmitted_bytes else 1.0
            seconds += remaining_bytes / prepare_rate if prepare_rate > 0 else 0.0
            wire = remaining_bytes * nonzero_share * framing
            if wire and bandwidth <= 0:
                return UNKNOWN_MS, bandwidth, source
            seconds += wire / bandwidth if wire else 0.0
        return bounded_ms(seconds), bandwidth, source

    def decide(self, iterations_done: int, remaining_bytes: int, expected_ms: int, elapsed_ms: int) -> Decision:
        """Switch over once the estimate fits, but only after one pass over dirty pages has
        measured what dirty pages cost (unless nothing is dirty at all)."""
        measured = iterations_done >= 2 or remaining_bytes == 0
        if expected_ms <= self.downtime_ms and measured:
            return Decision.SWITCHOVER
        out_of_time = self.timeout_ms and elapsed_ms >= self.timeout_ms
        if out_of_time or iterations_done >= self.max_iterations:
            return Decision.FORCE_SWITCHOVER if self.force_on_timeout else Decision.GIVE_UP
        return Decision.CONTINUE


UNKNOWN_MS = 2**63 - 1  # "never": no bandwidth known yet, or beyond any bound


def bounded_ms(seconds: float) -> int:
    """Seconds as whole ms, finite and within int64 (the status field): a tiny assumed
    bandwidth or a huge dirty set makes the estimate "never", not an overflow."""
    if not math.isfinite(seconds) or seconds * 1000 >= UNKNOWN_MS:
        return UNKNOWN_MS
    return max(0, int(seconds * 1000))


def convergence_forecast(
    target_ms: int, dirty_rate: float, bandwidth: float, iteration_seconds: float, overhead_seconds: float
) -> str:
    """'' when the target can be met; else why not, with numbers.

    Each iteration sends what the guest dirtied during the previous one, so with a
    dirty rate D below the bandwidth B the dirty set settles where an iteration of
    fixed cost c (its shortest so far: collection, scan, round trips) and R/B of
    sending leaves R = D (c + R/B) behind: R = D c / (1 - D/B). The downtime cannot
    fall below R/B plus the switchover's own overhead (two round trips, verify).
    """
    if bandwidth <= 0:
        return ""
    if dirty_rate >= bandwidth:
        return (
            f"will not converge: the guest dirties {format_bytes(dirty_rate)}/s and the link sends "
            f"{format_bytes(bandwidth)}/s; needs more bandwidth than the dirty rate, or auto-converge"
        )
    settled = dirty_rate * iteration_seconds / (1 - dirty_rate / bandwidth)
    floor_ms = (settled / bandwidth + overhead_seconds) * 1000
    if floor_ms <= target_ms:
        return ""
    return (
        f"will not converge: needs a downtime of at least {floor_ms:.0f} ms, the target is {target_ms} ms "
        f"(floor at {format_bytes(bandwidth)}/s with the guest dirtying {format_bytes(dirty_rate)}/s)"
    )
