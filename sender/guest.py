"""Pausing and resuming the source guest around the switchover.

Either a process id (SIGSTOP/SIGCONT, e.g. `livemig memtouch` or a VMM) or
hook commands configured on the sender service (never taken from API
requests: a client must not run commands on the source host). The migration
id and the guest pid are passed to hooks as LIVEMIG_MIGRATION_ID and
LIVEMIG_GUEST_PID.

A pid from a request is only ever signalled if that process really is the guest:
it maps one of the migration's region files (by device and inode, from
/proc/PID/maps), checked at StartMigration and again right before SIGSTOP, and it
is never init, the sender or the sender's parent. Signals go through a pidfd opened
at StartMigration (pidfd_open), never through the number: if the guest exits and
its pid is reused, the new process cannot be stopped by mistake (the signal fails
with ESRCH). A maps check read through /proc/PID is the pidfd's process whenever
that process is still alive afterwards, which the signal itself proves.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from livemig.common.process_identity import process_start
from livemig.sender.hooks import run_hook
from livemig.sender.pause_records import PauseRecord
from livemig.sender.throttle import HookThrottle, NoThrottle, PidThrottle, Throttle

log = logging.getLogger("livemig.sender")

STOP_WAIT_SECONDS = 5.0


class GuestControlError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class GuestHooks:
    pause_command: str = ""
    resume_command: str = ""
    throttle_command: str = ""  # auto-converge: told LIVEMIG_THROTTLE_PERCENT (sender/throttle.py)


class GuestControl:
    def __init__(self, migration_id: str, pid: int = 0, hooks: GuestHooks | None = None) -> None:
        self.migration_id = migration_id
        self.pid = pid
        self.hooks = hooks or GuestHooks()
        self.paused = False
        # What the status reports: "" (nothing to pause), "running", "paused", "resumed".
        self.state = "running" if self.can_pause else ""
        self.run_state = ""  # QEMU's own run state; only a QMP guest has one
        self._files: frozenset[FileId] = frozenset()
        self._pidfd = -1

    @property
    def can_pause(self) -> bool:
        return bool(self.pid or self.hooks.pause_command)

    def check(self, region_fds: Iterable[int] = ()) -> None:
        """Fail early (at StartMigration) unless the pid is the guest of these regions."""
        if not self.pid:
            return
        self._files = frozenset(file_id(os.fstat(fd)) for fd in region_fds)
        if self.pid <= 1 or self.pid in (os.getpid(), os.getppid()):
            raise GuestControlError(f"pid {self.pid} is not a guest (init, the sender or its parent)")
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError as error:
            raise GuestControlError(f"guest process {self.pid} does not exist") from error
        except OSError as error:
            raise GuestControlError(f"cannot open process {self.pid}: {error.strerror}") from error
        try:
            self._check_is_guest()
            self._signal(0)  # still alive: the maps just read were its own
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the guest process (its pidfd); it stays paused or running as it is."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _signal(self, signum: int) -> None:
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError as error:
            raise GuestControlError(f"guest process {self.pid} exited") from error

    def _check_is_guest(self) -> None:
        if self.pid <= 1 or self.pid in (os.getpid(), os.getppid()):
            raise GuestControlError(f"pid {self.pid} is not a guest (init, the sender or its parent)")
        try:
            mapped = mapped_files(self.pid)
        except FileNotFoundError as error:
            raise GuestControlError(f"guest process {self.pid} does not exist") from error
        except OSError as error:
            raise GuestControlError(f"cannot inspect process {self.pid}: {error.strerror}") from error
        if not self._files & mapped:
            raise GuestControlError(f"process {self.pid} does not map any of the migration's region files")

    def pause(self) -> None:
        if self.pid:
            self._check_is_guest()  # it may have unmapped its memory since StartMigration
            self._signal(signal.SIGSTOP)  # fails if the checked process is gone (pid reused)
            self.paused = True
            self.state = "paused"
            self._wait_stopped()
        elif self.hooks.pause_command:
            self._run_hook(self.hooks.pause_command)
            self.paused = True
            self.state = "paused"

    def resume(self) -> None:
        """Resume if we paused; never raises (called on every failure path)."""
        if not self.paused:
            return
        try:
            if self.pid:
                self._signal(signal.SIGCONT)
            elif self.hooks.resume_command:
                self._run_hook(self.hooks.resume_command)
            self.paused = False
            self.state = "resumed"
        except (OSError, GuestControlError) as error:
            self.state = "unknown"
            log.error("migration %s: could not resume the guest: %s", self.migration_id, error)

    def throttle(self) -> Throttle:
        """How auto-converge slows this guest: a duty cycle of SIGSTOP/SIGCONT through the
        pidfd, the operator's throttle hook, or nothing (said in the log)."""
        if self.pid and self._pidfd >= 0:
            return PidThrottle(self._pidfd, f"{self.pid}")
        if self.hooks.throttle_command:
            return HookThrottle(self.hooks.throttle_command, self.migration_id, self.pid)
        log.warning(
            "migration %s: auto-converge cannot throttle this guest (no pid, no --throttle-hook)", self.migration_id
        )
        return NoThrottle()

    def pause_record(self) -> PauseRecord | None:
        """How to resume this guest if the sender dies while it is paused (sender/pause_records.py)."""
        if self.pid:
            return PauseRecord(self.migration_id, "pid", pid=self.pid, pid_start=process_start(self.pid))
        if self.hooks.resume_command:
            return PauseRecord(self.migration_id, "hook", hook=self.hooks.resume_command)
        return None

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
        try:
            run_hook(command, self.migration_id, self.pid)
        except (OSError, subprocess.SubprocessError) as error:
            raise GuestControlError(f"hook {command!r} failed: {error}") from error


FileId = tuple[int, int, int]  # (device major, device minor, inode)


def file_id(status: os.stat_result) -> FileId:
    return os.major(status.st_dev), os.minor(status.st_dev), status.st_ino


def mapped_files(pid: int) -> frozenset[FileId]:
    """The files a process maps, from /proc/PID/maps ("addr perms offset maj:min inode path")."""
    found: set[FileId] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5 or fields[4] == "0":
            continue
        major, _, minor = fields[3].partition(":")
        found.add((int(major, 16), int(minor, 16), int(fields[4])))
    return frozenset(found)


def _task_state(task: Path) -> str | None:
    try:
        return (task / "stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, IndexError):
        return None
