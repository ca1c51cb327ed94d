"""No guest left paused: a record of every guest a migration paused, until it is settled.

A sender that dies between the pause and the end of a migration (SIGKILL, OOM, a
crash, the host's service manager) would leave the source guest stopped with
nobody to resume it. So before the sender pauses a guest it writes a record into
its state folder (`--state-dir`) saying how to resume it:

- a pid: the process id and its start time (field 22 of /proc/PID/stat), so a
  pid that was reused by another process is never signalled;
- a hook: the operator's resume command (from the sender's command line, never
  from a request);
- QMP: the guest's QMP socket.

The record goes when the migration has settled the guest: resumed after a failure
or cancel, or left paused on purpose once the receiver accepted the memory (the
destination takes over). A sender that starts resumes every record whose owner
(a sender process, by pid and start time) is gone, and so does
`livemig guest resume`; several senders may share the folder, each leaving the
records of live owners alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from livemig.common.process_identity import alive, process_start
from livemig.common.qmp import QmpFailure, qmp_connection
from livemig.sender.hooks import run_hook

log = logging.getLogger("livemig.sender")

DEFAULT_STATE_DIR = Path("/run/livemig/sender")
SUFFIX = ".paused.json"


@dataclass(frozen=True, slots=True)
class PauseRecord:
    migration_id: str
    kind: str  # "pid", "hook" or "qmp"
    owner_pid: int = 0  # the sender that paused it
    owner_start: int = 0
    pid: int = 0
    pid_start: int = 0
    hook: str = ""
    qmp_socket: str = ""


def resume(record: PauseRecord) -> str:
    """Resume the guest a record names; what happened, one line. Never raises."""
    try:
        if record.kind == "pid":
            if not alive(record.pid, record.pid_start):
                return f"guest process {record.pid} is gone: nothing to resume"
            pidfd = os.pidfd_open(record.pid)
            try:
                if process_start(record.pid) != record.pid_start:  # reused between the two looks
                    return f"guest process {record.pid} is gone: nothing to resume"
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            finally:
                os.close(pidfd)
            return f"guest process {record.pid} resumed (SIGCONT)"
        if record.kind == "qmp":
            with qmp_connection(record.qmp_socket, 5.0) as qmp:
                state = qmp.run_state()
                if state not in ("paused", "postmigrate", "finish-migrate"):
                    return f"QEMU guest at {record.qmp_socket} is {state!r}: left as it is"
                qmp.execute("cont")
            return f"QEMU guest at {record.qmp_socket} resumed (cont)"
        if record.kind == "hook":
            run_hook(record.hook, record.migration_id, record.pid)
            return f"resume hook {record.hook!r} ran"
        return f"unknown kind of record {record.kind!r}: left"
    except (OSError, subprocess.SubprocessError, QmpFailure) as error:
        return f"could not resume: {error}"


class PauseRecords:
    """The records in one folder; None: records are off (a sender without a state folder)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, migration_id: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{migration_id}{SUFFIX}"

    def write(self, record: PauseRecord) -> None:
        """Durably, before the pause: a record without a pause is harmless, the reverse is not."""
        if self.directory is None:
            return
        own = os.getpid()
        record = PauseRecord(**{**asdict(record), "owner_pid": own, "owner_start": process_start(own)})
        fd, temporary = tempfile.mkstemp(dir=self.directory, prefix=".record-")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(asdict(record), file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self._path(record.migration_id))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def remove(self, migration_id: str) -> None:
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path(migration_id).unlink()

    def orphans(self) -> list[PauseRecord]:
        """Records whose sender is gone (unreadable ones are logged and left)."""
        if self.directory is None:
            return []
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                record = PauseRecord(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as error:
                log.error("pause record %s cannot be read: %s", path.name, error)
                continue
            if not alive(record.owner_pid, record.owner_start):
                found.append(record)
        return found

    def resume_orphans(self) -> list[tuple[PauseRecord, str]]:
        """Resume every guest a dead sender left paused; each outcome is logged."""
        outcomes = []
        for record in self.orphans():
            outcome = resume(record)
            log.warning("migration %s: its sender died with the guest paused; %s", record.migration_id, outcome)
            if not outcome.startswith("could not"):
                self.remove(record.migration_id)
            outcomes.append((record, outcome))
        return outcomes
