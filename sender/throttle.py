"""Auto-converge: slow a guest that dirties memory faster than the link sends it.

The policy is QEMU's (`auto-converge`, migration/ram.c): after two iterations in a
row in which the guest dirtied more than half of what the link sent
(throttle-trigger-threshold 50 %), throttle the guest by 20 %, and by 10 % more each
time that happens again, at most 99 %. Half, not all: with the dirty rate just under
the bandwidth each iteration leaves almost as much as it sent, and pre-copy crawls.
The ways to apply it:

- a pid guest is stopped (SIGSTOP through its pidfd) for that share of every 100 ms
  period, then continued (SIGCONT);
- a hook guest: the sender's --throttle-hook runs with LIVEMIG_THROTTLE_PERCENT
  (0 at release), for VMMs with a throttle of their own (cgroup cpu.max, QEMU's
  cpu-throttle-percentage).

Release is unconditional: `release()` ends the duty cycle with the guest continued,
at every end of a migration and before the switchover pause (the pause is the
migration's, not the throttle's).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from dataclasses import dataclass

from livemig.sender.hooks import run_hook

log = logging.getLogger("livemig.sender")

PERIOD_SECONDS = 0.1


@dataclass(slots=True)
class AutoConverge:
    """QEMU's parameters: cpu-throttle-initial 20, -increment 10, max-cpu-throttle 99,
    throttle-trigger-threshold 50."""

    initial: int = 20
    increment: int = 10
    maximum: int = 99
    trigger: float = 0.5
    percent: int = 0
    _high: int = 0

    def after_iteration(self, dirty_rate: float, bandwidth: float) -> int:
        """The throttle for the next iteration, from the one that just ended."""
        if bandwidth > 0 and dirty_rate > bandwidth * self.trigger:
            self._high += 1
            if self._high >= 2:
                self._high = 0
                self.percent = self.initial if not self.percent else min(self.maximum, self.percent + self.increment)
        else:
            self._high = 0
        return self.percent


class PidThrottle:
    """Stops a process for `percent` of every period, through a pidfd (never by number)."""

    def __init__(self, pidfd: int, label: str) -> None:
        self._pidfd = pidfd
        self._label = label
        self._percent = 0
        self._stopped = False
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def set(self, percent: int) -> None:
        with self._wake:
            self._percent = max(0, min(99, percent))
            if self._percent and self._thread is None:
                self._thread = threading.Thread(target=self._cycle, name=f"throttle-{self._label}", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def _signal(self, signum: int) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            self._closing = True  # the guest is gone: nothing to throttle

    def _cycle(self) -> None:
        with self._wake:
            while not self._closing:
                if not self._percent:
                    self._wake.wait()
                    continue
                stop_for = PERIOD_SECONDS * self._percent / 100
                self._signal(signal.SIGSTOP)
                self._stopped = True
                self._wake.wait(stop_for)
                self._signal(signal.SIGCONT)
                self._stopped = False
                if not self._closing:
                    self._wake.wait(PERIOD_SECONDS - stop_for)

    def release(self) -> None:
        """End the duty cycle; the guest is left running (continued) when this returns."""
        with self._wake:
            self._closing = True
            self._percent = 0
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._stopped:
            self._signal(signal.SIGCONT)
            self._stopped = False


class HookThrottle:
    """Tells the operator's --throttle-hook the share; 0 at release."""

    def __init__(self, command: str, migration_id: str, guest_pid: int) -> None:
        self._command = command
        self._migration_id = migration_id
        self._guest_pid = guest_pid
        self._percent = 0

    def set(self, percent: int) -> None:
        if percent == self._percent:
            return
        self._percent = percent
        try:
            run_hook(self._command, self._migration_id, self._guest_pid, LIVEMIG_THROTTLE_PERCENT=str(percent))
        except (OSError, subprocess.SubprocessError) as error:
            log.error("throttle hook %r failed at %d %%: %s", self._command, percent, error)

    def release(self) -> None:
        self.set(0)


class NoThrottle:
    """A guest livemig cannot throttle (no pid, no throttle hook): auto-converge says so once."""

    def set(self, percent: int) -> None:
        del percent

    def release(self) -> None:
        pass


Throttle = PidThrottle | HookThrottle | NoThrottle
