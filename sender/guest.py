"""Pausing and resuming the source guest around the switchover.

Either a process id (SIGSTOP/SIGCONT, e.g. `livemig memtouch` or a VMM) or
hook commands configured on the sender service (never taken from API
requests: a client must not run commands on the source host). The migration
id and the guest pid are passed to hooks as LIVEMIG_MIGRATION_ID and
LIVEMIG_GUEST_PID.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("livemig.sender")

STOP_WAIT_SECONDS = 5.0
HOOK_TIMEOUT_SECONDS = 30.0


class GuestControlError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class GuestHooks:
    pause_command: str = ""
    resume_command: str = ""


class GuestControl:
    def __init__(self, migration_id: str, pid: int = 0, hooks: GuestHooks | None = None) -> None:
        self.migration_id = migration_id
        self.pid = pid
        self.hooks = hooks or GuestHooks()
        self.paused = False

    @property
    def can_pause(self) -> bool:
        return bool(self.pid or self.hooks.pause_command)

    def check(self) -> None:
        """Fail early (at StartMigration) when the guest process does not exist."""
        if self.pid:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError as error:
                raise GuestControlError(f"guest process {self.pid} does not exist") from error

    def pause(self) -> None:
        if self.pid:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True
            self._wait_stopped()
        elif self.hooks.pause_command:
            self._run_hook(self.hooks.pause_command)
            self.paused = True

    def resume(self) -> None:
        """Resume if we paused; never raises (called on every failure path)."""
        if not self.paused:
            return
        try:
            if self.pid:
                os.kill(self.pid, signal.SIGCONT)
            elif self.hooks.resume_command:
                self._run_hook(self.hooks.resume_command)
            self.paused = False
        except (OSError, GuestControlError) as error:
            log.error("migration %s: could not resume the guest: %s", self.migration_id, error)

    def _wait_stopped(self) -> None:
        """SIGSTOP is asynchronous: wait until every thread of the guest is stopped."""
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        tasks = Path(f"/proc/{self.pid}/task")
        while time.monotonic() < deadline:
            try:
                states = [_task_state(task) for task in tasks.iterdir()]
            except FileNotFoundError as error:
                raise GuestControlError(f"guest process {self.pid} exited") from error
            if all(state in ("T", "t", "Z", "X", None) for state in states):
                return
            time.sleep(0.001)
        raise GuestControlError(f"guest process {self.pid} did not stop within {STOP_WAIT_SECONDS} s")

    def _run_hook(self, command: str) -> None:
        env = {**os.environ, "LIVEMIG_MIGRATION_ID": self.migration_id, "LIVEMIG_GUEST_PID": str(self.pid)}
        try:
            subprocess.run(shlex.split(command), env=env, check=True, timeout=HOOK_TIMEOUT_SECONDS)
        except (OSError, subprocess.SubprocessError) as error:
            raise GuestControlError(f"hook {command!r} failed: {error}") from error


def _task_state(task: Path) -> str | None:
    try:
        return (task / "stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return None
