"""What a migration holds on the source host: the open guest memory files (its
layout), the dirty maps of a live migration, and the guest it may pause.

`acquire` is the one place these are opened, each under the rules of the sender's
configuration (regular files only, never blocking, optionally confined to
--memory-root; dirty maps only where the sender derives them; a guest pid only if
the process maps a region file). It either returns everything or releases what it
had opened and raises a typed SenderError: a refused StartMigration leaves no open
descriptor and no mapping behind.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from livemig.common.guest_memory import LayoutError, MemoryLayout, open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.config import SenderConfig
from livemig.sender.dirty_log import DirtyLog, dirty_log_path
from livemig.sender.errors import Reason, SenderError
from livemig.sender.guest import GuestControl, GuestControlError
from livemig.sender.placement import PlacedRegion, place_request_regions
from livemig.sender.qmp_guest import QmpGuest, resolve_qmp_socket


@dataclass(slots=True)
class MigrationResources:
    layout: MemoryLayout
    dirty_log: DirtyLog | None
    guest: GuestControl | QmpGuest

    def release(self) -> None:
        if self.dirty_log is not None:
            self.dirty_log.close()
        self.layout.close()


def within(path: str, roots: Sequence[str]) -> bool:
    return any(os.path.commonpath([path, root]) == root for root in roots)


def _confine(config: SenderConfig, fd: int, path: str) -> None:
    """Refuse a region file that resolves outside every --memory-root (the check is on
    the opened descriptor, so no symlink or rename race gets around it)."""
    if not config.memory_roots:
        return
    real = os.readlink(f"/proc/self/fd/{fd}")
    if not within(real, [str(root) for root in config.memory_roots]):
        raise PermissionError(errno.EACCES, "outside the sender's --memory-root", path)


def build_layout(
    regions: Sequence[pb.GuestMemoryRegion], page_size: int, config: SenderConfig
) -> tuple[MemoryLayout, list[PlacedRegion]]:
    """The source layout of a request's regions: placed (regions without a GPA go
    where the sender's view of the files puts them), opened, checked, in GPA order;
    and the placed regions in that order. Raises OSError or LayoutError."""
    placed = place_request_regions(regions)  # sorted by gpa
    layout = open_source_layout(
        [(r.gpa, r.path) for r in placed], page_size, admit=lambda fd, path: _confine(config, fd, path)
    )
    return layout, placed


def _open_dirty_log(layout: MemoryLayout, ordered: Sequence[PlacedRegion], config: SenderConfig) -> DirtyLog:
    paths = [dirty_log_path(r.path, config.dirty_log_dir) for r in ordered]
    allowed = [str(config.dirty_log_dir.resolve())] if config.dirty_log_dir else [str(r) for r in config.memory_roots]
    if allowed:
        for path in paths:
            if not within(os.path.realpath(path), allowed):
                raise PermissionError(errno.EACCES, "dirty map outside the sender's directories", path)
    return DirtyLog(layout, paths)


def acquire(
    migration_id: str, request: pb.StartMigrationRequest, page_size: int, config: SenderConfig
) -> MigrationResources:
    """Open everything a validated StartMigration request needs; all or nothing."""
    layout = dirty_log = None
    try:
        layout, ordered = build_layout(request.regions, page_size, config)
        if ordered[0].dirty_log:
            dirty_log = _open_dirty_log(layout, ordered, config)
        guest: GuestControl | QmpGuest
        if request.qmp_socket:
            assert config.qmp_dir is not None  # the door refuses qmp_socket without --qmp-dir
            guest = QmpGuest(migration_id, resolve_qmp_socket(config.qmp_dir, request.qmp_socket), request.qmp_socket)
            guest.check((region.fd, region.length) for region in layout.regions)
        else:
            guest = GuestControl(migration_id, request.guest_pid, config.hooks)
            guest.check(region.fd for region in layout.regions)  # holds a pidfd from here (closed on failure)
        return MigrationResources(layout, dirty_log, guest)
    except BaseException as error:
        if dirty_log is not None:
            dirty_log.close()
        if layout is not None:
            layout.close()
        raise _typed(error) from error


def _typed(error: BaseException) -> BaseException:
    if isinstance(error, FileNotFoundError):
        return SenderError(Reason.NOT_FOUND, f"file not found: {error.filename}")
    if isinstance(error, PermissionError):
        return SenderError(Reason.FORBIDDEN, f"cannot open {error.filename}: {error.strerror}")
    if isinstance(error, GuestControlError):
        return SenderError(Reason.GUEST, str(error))
    if isinstance(error, LayoutError | ValueError):
        return SenderError(Reason.INVALID, str(error))
    if isinstance(error, OSError):
        return SenderError(Reason.INVALID, f"cannot use {error.filename}: {error.strerror}")
    return error
