"""One migration per guest: what running migrations hold, and refusing a second one.

Two migrations of the same guest both accepted clear each other's dirty maps, and
one of them can then report COMPLETED while its destination differs from the paused
source (the second COMPLETED after 3 iterations with 5 MB different). QEMU refuses
the second `migrate` ("migration already in progress"), libvirt takes the domain's
job lock. Here a StartMigration whose region files, dirty maps, guest pid or QMP
socket overlap a running migration's is refused with FAILED_PRECONDITION naming
that migration.

Files are compared by device and inode (taken from the descriptors the migration
opened), never by path: two paths may name one file. A claim is taken once the
migration's resources are open and given back as soon as the migration's state is
final (from then on it touches neither the guest nor its dirty maps), so the next
migration of the guest, or a retry after a failure, is accepted at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from livemig.sender.errors import Reason, SenderError

if TYPE_CHECKING:
    from livemig.sender.resources import MigrationResources

FileIdentity = tuple[int, int]  # (st_dev, st_ino)


def identity(fd: int) -> FileIdentity:
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


@dataclass(frozen=True, slots=True)
class GuestHoldings:
    """What one migration holds of its guest."""

    files: frozenset[FileIdentity] = frozenset()  # region files, dirty maps, QMP socket
    pid: int = 0


@dataclass(slots=True)
class Claim:
    claims: GuestClaims
    migration_id: str
    holdings: GuestHoldings
    released: bool = field(default=False)

    def release(self) -> None:
        self.claims._release(self)


class GuestClaims:
    def __init__(self) -> None:
        self._held: dict[str, GuestHoldings] = {}
        self._lock = threading.Lock()

    def conflict(self, files: Iterable[FileIdentity], pid: int = 0) -> str:
        """What a start with these holdings would be refused for ("" when nothing), claiming nothing."""
        with self._lock:
            return self._conflict(GuestHoldings(frozenset(files), pid))

    def claim(self, migration_id: str, files: Iterable[FileIdentity], pid: int = 0) -> Claim:
        holdings = GuestHoldings(frozenset(files), pid)
        with self._lock:
            refusal = self._conflict(holdings)
            if refusal:
                raise SenderError(Reason.GUEST, refusal)
            self._held[migration_id] = holdings
        return Claim(self, migration_id, holdings)

    def _conflict(self, holdings: GuestHoldings) -> str:
        """Under the lock: the first running migration these holdings overlap, in words."""
        for other_id, other in self._held.items():
            what = _overlap(holdings, other)
            if what:
                return f"{what} already in running migration {other_id}: one migration per guest"
        return ""

    def _release(self, claim: Claim) -> None:
        with self._lock:
            if not claim.released:
                claim.released = True
                self._held.pop(claim.migration_id, None)

    def running(self) -> dict[str, GuestHoldings]:
        with self._lock:
            return dict(self._held)


def _overlap(new: GuestHoldings, held: GuestHoldings) -> str:
    if new.pid and new.pid == held.pid:
        return f"guest pid {new.pid} is"
    shared = len(new.files & held.files)
    if shared:
        return f"{shared} of its files (region, dirty map or QMP socket) {'is' if shared == 1 else 'are'}"
    return ""


def migration_holdings(resources: MigrationResources) -> tuple[list[FileIdentity], int]:
    """What a migration holds: its region files, its dirty maps, a QMP guest's socket
    (device and inode each), and its guest pid."""
    files = [identity(region.fd) for region in resources.layout.regions]
    if resources.dirty_log is not None:
        files.extend(dirty_map.identity for dirty_map in resources.dirty_log.maps)
    socket_path = getattr(resources.guest, "socket_path", None)
    if socket_path is not None:
        status = os.stat(socket_path)
        files.append((status.st_dev, status.st_ino))
    return files, getattr(resources.guest, "pid", 0)
