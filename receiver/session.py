"""A migration session as the receiver's control process owns it.

Destination memory lives in files the control process creates under its own
memory directory (never a path the sender names), sparse and zero on creation,
next to one received-pages map per region in the receiver's private state
folder. The data workers write into those files (receiver/writer.py) and report
each batch here; this object keeps the session's state (active, completed,
aborted, expired), its ledger (totals counted once per batch id, open streams,
last traffic), and checks totals and digest at completion with its own file
handles. (Tests apply batches in their own process through tests/local_data_plane.py.)
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livemig.common.digest import memory_digest
from livemig.common.guest_memory import LayoutError, MemoryLayout, RegionFile
from livemig.common.ranges import MemoryRange
from livemig.receiver.batch_ids import DEFAULT_MAX_UNSETTLED_BATCHES
from livemig.receiver.errors import Reason, ReceiverError, os_error_text, refusal_for_state, storage_error
from livemig.receiver.ledger import SessionLedger
from livemig.receiver.orphans import mark_finished, mark_unfinished
from livemig.receiver.session_record import ACTIVE, RecordRegion, SessionRecord
from livemig.receiver.shared_batch_ids import create_table
from livemig.receiver.write_mode import WriteMode, file_write_mode


class SessionState(enum.Enum):
    ACTIVE = ACTIVE
    COMPLETED = "completed"
    ABORTED = "aborted"
    EXPIRED = "expired"  # aborted by the receiver: no stream and no traffic for the idle timeout


class Session:
    """Destination memory of one migration, its state and its ledger (control process)."""

    def __init__(
        self,
        session_id: str,
        token: str,
        migration_id: str,
        directory: Path,
        state_directory: Path,
        layout: MemoryLayout,
        record: SessionRecord,
    ) -> None:
        self.session_id = session_id
        self.token = token
        self.migration_id = migration_id
        self.directory = directory
        self.state_directory = state_directory
        self.layout = layout
        self.record = record
        self.max_batch_bytes = record.max_batch_bytes
        self.state = SessionState.ACTIVE
        self.owner: tuple[bytes, ...] | None = record.owner
        self.ledger = SessionLedger(record.max_unsettled_batches)
        self.expired_after = 0.0
        self.lock = threading.RLock()  # one end at a time: complete, abort or expiry

    @classmethod
    def create(
        cls,
        session_id: str,
        token: str,
        migration_id: str,
        directory: Path,
        layout_ranges: Sequence[MemoryRange],
        page_size: int,
        max_batch_bytes: int,
        state_directory: Path | None = None,
        owner: tuple[bytes, ...] | None = None,
        write_mode: str = WriteMode.PWRITE,
        max_unsettled_batches: int = DEFAULT_MAX_UNSETTLED_BATCHES,
    ) -> Session:
        """Make the destination files and maps. Raises ReceiverError(BAD_LAYOUT or STORAGE);
        a failure leaves nothing behind."""
        try:
            MemoryLayout([RegionFile(r.gpa, r.length, "") for r in layout_ranges], page_size)
        except LayoutError as error:
            raise ReceiverError(Reason.BAD_LAYOUT, str(error)) from error
        state_directory = state_directory or directory.with_name(directory.name + ".state")
        regions: list[RegionFile] = []
        record_regions: list[RecordRegion] = []
        received_map = state_directory / "received.map"
        batch_ids = state_directory / "batch-ids.table"
        try:
            directory.mkdir(mode=0o700)
            mark_unfinished(directory)  # a crash before completion leaves it for the next receiver to remove
            state_directory.mkdir(mode=0o700, parents=True)
            first_page = 0
            for index, memory_range in enumerate(sorted(layout_ranges)):
                path = directory / f"region-{index}-gpa-{memory_range.gpa:#x}.mem"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.ftruncate(fd, memory_range.length)  # sparse: reads as zero, allocates nothing
                    write_mode = file_write_mode(write_mode, fd)
                finally:
                    os.close(fd)  # not held for the session: opened again where needed
                regions.append(RegionFile(memory_range.gpa, memory_range.length, str(path)))
                record_regions.append(RecordRegion(memory_range.gpa, memory_range.length, str(path), first_page))
                first_page += memory_range.length // page_size
            # One map for every region, sparse: a page of it is allocated only where a batch
            # wrote data, and then the destination holds at least as much.
            map_fd = os.open(received_map, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(map_fd, first_page)
            finally:
                os.close(map_fd)
            create_table(batch_ids, max_unsettled_batches)
        except (OSError, OverflowError, ValueError) as error:
            shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(state_directory, ignore_errors=True)
            what = os_error_text(error) if isinstance(error, OSError) else str(error)
            raise ReceiverError(Reason.STORAGE, f"cannot create destination memory: {what}") from error
        record = SessionRecord(
            session_id,
            migration_id,
            owner,
            page_size,
            max_batch_bytes,
            tuple(record_regions),
            write_mode=write_mode,
            max_unsettled_batches=max_unsettled_batches,
            received_map=str(received_map),
            batch_ids=str(batch_ids),
        )
        layout = MemoryLayout(regions, page_size)
        return cls(session_id, token, migration_id, directory, state_directory, layout, record)

    # -- state ---------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.state is SessionState.ACTIVE

    def check_active(self) -> None:
        if not self.active:
            raise refusal_for_state(self.state.value, self.expired_after)

    def ended_record(self, state: SessionState | None = None, expired_after: float = 0.0) -> SessionRecord:
        """The record as data workers should see it (in `state`, default the current one)."""
        record = self.record
        state = state or self.state
        return dataclasses.replace(record, state=state.value, expired_after=expired_after or self.expired_after)

    def received_pages(self, index: int) -> np.ndarray:
        """The shared received-pages flags of region `index` (one per page), as stored."""
        region = self.record.regions[index]
        pages = np.fromfile(self.record.received_map, dtype=np.bool_)
        return pages[region.first_page : region.first_page + region.length // self.layout.page_size]

    @property
    def written_bytes(self) -> int:
        return self.ledger.totals()[0]

    @property
    def batches(self) -> int:
        return self.ledger.totals()[1]

    # -- in this process (tests) ---------------------------------------------------

    def complete(self, transmitted_bytes: int, batches: int, digest: bytes) -> tuple[bool, int]:
        """Check the sender's totals (and digest); returns (verified, allocated bytes)."""
        self.check_active()
        if self.ledger.overflowed:
            raise ReceiverError(
                Reason.LIMIT,
                f"the sender kept more than {self.record.max_unsettled_batches} batches unsettled "
                "(--max-unsettled-batches); their totals were not kept",
            )
        written, applied = self.ledger.totals()
        if written != transmitted_bytes or applied != batches:
            raise ReceiverError(
                Reason.TOTALS_MISMATCH,
                f"sender reports {transmitted_bytes} bytes in {batches} batches, "
                f"receiver wrote {written} bytes in {applied} batches",
            )
        verified = bool(digest)
        opened = self._open_regions()
        try:
            if digest:
                local = memory_digest(opened)
                if local != digest:
                    raise ReceiverError(
                        Reason.DIGEST_MISMATCH,
                        f"destination memory digest {local.hex()} differs from the source's {digest.hex()}",
                    )
            for region in opened.regions:
                os.fsync(region.fd)  # a no-op on tmpfs; durability on disk-backed memory
        finally:
            opened.close()
        mark_finished(self.directory)
        self.state = SessionState.COMPLETED
        allocated = self.allocated_bytes()
        shutil.rmtree(self.state_directory, ignore_errors=True)
        return verified, allocated

    def _open_regions(self) -> MemoryLayout:
        """The destination files, opened for the checks at completion (this process holds
        no descriptor of them for the session's life: a region may be one of thousands)."""
        regions: list[RegionFile] = []
        try:
            for region in self.layout.regions:
                fd = os.open(region.path, os.O_RDONLY | os.O_CLOEXEC)
                regions.append(RegionFile(region.gpa, region.length, region.path, fd))
        except OSError as error:
            for opened in regions:
                os.close(opened.fd)
            raise storage_error(error, "opening destination memory") from error
        return MemoryLayout(regions, self.layout.page_size)

    def abort(self, state: SessionState = SessionState.ABORTED, idle_seconds: float = 0.0) -> None:
        """Drop the destination memory; a completed session's memory is kept."""
        self.check_active()
        self.state = state
        self.expired_after = idle_seconds
        self.layout.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        shutil.rmtree(self.state_directory, ignore_errors=True)

    def allocated_bytes(self) -> int:
        """Bytes the destination files take now. A session may end (abort, expiry) while
        another thread asks (a prepare counting the space promised to sessions in flight):
        its files are gone then, and so is their space, so a missing file counts 0."""
        allocated = 0
        for region in self.layout.regions:
            try:
                allocated += os.stat(region.path).st_blocks * 512
            except FileNotFoundError:
                continue
        return allocated

    @property
    def destination_regions(self) -> list[RegionFile]:
        return self.layout.regions
