"""When to stop trying again: failures in a row without progress, and for how long.

A sender connection's stream reconnects (sender/stream.py) and the migration
process restarts a dead connection process (sender/transfer.py) under one rule:
give up after `max_failures` failures in a row without progress, or once it has
been failing for `budget_seconds`. The clock runs from the first failure since the
last progress, not from the last progress itself: on a slow link a minute between
acknowledgements is normal, and a connection that breaks then still deserves its
tries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class RetryBudget:
    max_failures: int
    budget_seconds: float
    failures: int = 0  # in a row, since the last progress
    failing_since: float = 0.0  # time.monotonic() of the first of them

    def progressed(self) -> None:
        """Progress: the next failure is a first one again."""
        self.failures = 0

    def failed(self, now: float, last_progress: float = 0.0) -> bool:
        """Count a failure at `now`; True when the budget is spent (give up). A
        `last_progress` after the first failure (progress that does not reset the count,
        such as scanning with nothing to acknowledge) restarts the clock."""
        self.failures += 1
        if self.failures == 1 or last_progress > self.failing_since:
            self.failing_since = now
        return self.failures > self.max_failures or self.stalled(now) > self.budget_seconds

    def stalled(self, now: float) -> float:
        """Seconds since the first failure without progress."""
        return now - self.failing_since
