"""A QEMU guest paused and resumed over QMP: the third kind of guest control, beside a
pid (SIGSTOP/SIGCONT) and the operator's hooks (sender/guest.py).

Trust is the region files' model. The operator names one directory where QMP
sockets may live (`livemig sender --qmp-dir`); a request names a socket under it
(validated in sender/requests.py), never a path of its own, and the resolved socket
must still lie inside the directory (no symlink out of it). Before anything starts
the guest must prove it is the guest of the request's regions:

- the socket answers QMP;
- every RAM backend (`query-memdev`) is a `memory-backend-file` with `share=on`
  (its `mem-path` read with `qom-get`): QEMU's `x-ignore-shared` then leaves that
  RAM to livemig, and anything else would be RAM nobody migrates;
- the backends' files are exactly the request's region files, by device and inode
  (never by path: the sender and QEMU may name them differently), each of the
  backend's size.

QEMU's QMP socket serves one client at a time, so the sender connects for each
step (check, stop, cont) and leaves at once: an orchestrator (`livemig migrate-vm`)
takes its turn on the same socket for the device-state migration afterwards.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from livemig.common.qmp import QmpFailure, qmp_connection
from livemig.sender.guest import FileId, GuestControlError, file_id
from livemig.sender.pause_records import PauseRecord
from livemig.sender.throttle import NoThrottle

log = logging.getLogger("livemig.sender")

QMP_TIMEOUT_SECONDS = 5.0


def resolve_qmp_socket(qmp_dir: Path, name: str) -> Path:
    """The socket a request names, resolved; GuestControlError unless it is a unix
    socket inside qmp_dir (the name itself was checked at the door: relative, no "..")."""
    root = Path(os.path.realpath(qmp_dir))
    real = Path(os.path.realpath(root / name))
    if os.path.commonpath([real, root]) != str(root):
        raise PermissionError(errno.EACCES, "QMP socket outside the sender's --qmp-dir", name)
    try:
        status = os.stat(real)
    except OSError as error:  # the name goes back to the client, never the host path
        raise type(error)(error.errno, error.strerror, name) from None
    if not stat.S_ISSOCK(status.st_mode):
        raise GuestControlError(f"qmp_socket {name!r} is not a socket")
    return real


class QmpGuest:
    """Pause (`stop`) and resume (`cont`) a QEMU guest; resume only what this migration paused."""

    can_pause = True

    def __init__(self, migration_id: str, socket_path: Path, name: str) -> None:
        self.migration_id = migration_id
        self.socket_path = socket_path
        self.name = name  # as the request gave it: what messages show (never the host path)
        self.paused = False
        self.state = "running"
        self.run_state = ""

    def check(self, regions: Iterable[tuple[int, int]]) -> None:
        """Fail early (at StartMigration) unless this QEMU's RAM is exactly these
        region files. `regions`: (fd, length) of each opened region file."""
        wanted: dict[FileId, int] = {file_id(os.fstat(fd)): length for fd, length in regions}
        try:
            with qmp_connection(str(self.socket_path), QMP_TIMEOUT_SECONDS) as qmp:
                self.run_state = qmp.run_state()
                backends = qmp.memory_backends()
        except QmpFailure as error:
            raise GuestControlError(f"qmp_socket {self.name!r} does not answer QMP: {error}") from error
        if not backends:
            raise GuestControlError(f"guest {self.name!r} has no memory backends (-machine memory-backend=...)")
        found: dict[FileId, int] = {}
        for backend in backends:
            if not backend.mem_path:
                raise GuestControlError(f"guest {self.name!r}: RAM backend {backend.id!r} is not a memory-backend-file")
            if not backend.share:
                raise GuestControlError(f"guest {self.name!r}: RAM backend {backend.id!r} is not share=on")
            try:
                found[file_id(os.stat(backend.mem_path))] = backend.size
            except OSError as error:
                raise GuestControlError(
                    f"guest {self.name!r}: the file of RAM backend {backend.id!r} cannot be seen by the sender "
                    f"({error.strerror})"
                ) from error
        if set(found) != set(wanted):
            raise GuestControlError(
                f"the regions are not guest {self.name!r}'s RAM: it has {len(found)} backend file(s), "
                f"{len(set(found) & set(wanted))} of them among the {len(wanted)} region(s)"
            )
        for key, size in found.items():
            if wanted[key] != size:
                raise GuestControlError(
                    f"guest {self.name!r}: a region file holds {wanted[key]} bytes, its RAM backend {size}"
                )
        self.state = "running" if self.run_state == "running" else "paused"

    def pause(self) -> None:
        try:
            with qmp_connection(str(self.socket_path), QMP_TIMEOUT_SECONDS) as qmp:
                was_running = qmp.run_state() == "running"
                if was_running:
                    qmp.execute("stop")  # synchronous: every vCPU is stopped when it returns
                self.run_state = qmp.run_state()
        except QmpFailure as error:
            raise GuestControlError(f"cannot pause guest {self.name!r}: {error}") from error
        self.paused = was_running  # a guest that was paused before stays the operator's to resume
        self.state = "paused"

    def resume(self) -> None:
        """Resume if this migration paused it; never raises (called on every failure path)."""
        if not self.paused:
            return
        try:
            with qmp_connection(str(self.socket_path), QMP_TIMEOUT_SECONDS) as qmp:
                qmp.execute("cont")
                self.run_state = qmp.run_state()
            self.paused = False
            self.state = "resumed"
        except QmpFailure as error:
            self.state = "unknown"
            log.error("migration %s: could not resume guest %r: %s", self.migration_id, self.name, error)

    def throttle(self) -> NoThrottle:
        """QEMU throttles its own vCPUs only inside its own migration; a QEMU guest is
        migrated stop-and-copy here, so there is nothing to steer."""
        return NoThrottle()

    def pause_record(self) -> PauseRecord:
        """How to resume this guest if the sender dies while it is paused (sender/pause_records.py)."""
        return PauseRecord(self.migration_id, "qmp", qmp_socket=str(self.socket_path))

    def close(self) -> None:
        """Nothing is held between steps."""
