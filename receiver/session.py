"""A migration session on the receiver: destination memory, validation, writes.

Destination memory lives in files the receiver creates under its own memory
directory (never a path the sender names), sparse and zero on creation. A batch
is validated completely before its first byte is written, so a refused batch
changes nothing. Pages no batch names are never read or written, which keeps the
destination's allocated bytes close to the non-zero bytes sent.
"""

from __future__ import annotations

import contextlib
import enum
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livemig.common.digest import memory_digest
from livemig.common.guest_memory import LayoutError, MemoryLayout, RegionFile
from livemig.common.ranges import MemoryRange
from livemig.common.wire import DecodedBatch
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.storage import storage_fault

_ZERO_BLOCK = bytes(1 << 20)


class SessionState(enum.Enum):
    ACTIVE = "active"
    COMPLETED = "completed"
    ABORTED = "aborted"
    EXPIRED = "expired"  # aborted by the receiver: no stream and no traffic for the idle timeout


class Session:
    """Destination memory of one migration and what has been written into it."""

    def __init__(
        self,
        session_id: str,
        token: str,
        migration_id: str,
        directory: Path,
        layout: MemoryLayout,
        max_batch_bytes: int,
    ) -> None:
        self.session_id = session_id
        self.token = token
        self.migration_id = migration_id
        self.directory = directory
        self.layout = layout
        self.max_batch_bytes = max_batch_bytes
        self.state = SessionState.ACTIVE
        self.owner: tuple[bytes, ...] | None = None  # certificate identities of the preparing client
        self.written_bytes = 0
        self.batches = 0
        # Writers in flight hold the files open: abort and complete wait for them
        # before closing, so a closed (and reused) descriptor is never written.
        self._lock = threading.Condition()
        self._writers = 0
        self._streams = 0
        # Batch ids applied or being applied: a sender that lost a stream resends its
        # unacknowledged batches on a new one, and each must count (and land) once.
        self._applied: set[int] = set()
        self._applying: set[int] = set()
        self.last_activity = time.monotonic()
        self.expired_after = 0.0
        # One flag per page: has a batch written data there? A later zero range must
        # zero those pages, and only those (untouched pages are zero already).
        self._received = [np.zeros(r.length // layout.page_size, dtype=bool) for r in layout.regions]
        self._region_starts = np.array([r.gpa for r in layout.regions], dtype=np.uint64)
        self._region_ends = np.array([r.gpa + r.length for r in layout.regions], dtype=np.uint64)

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
    ) -> Session:
        """Make the destination files. Raises ReceiverError(BAD_LAYOUT or STORAGE)."""
        try:
            MemoryLayout([RegionFile(r.gpa, r.length, "") for r in layout_ranges], page_size)
        except LayoutError as error:
            raise ReceiverError(Reason.BAD_LAYOUT, str(error)) from error
        regions: list[RegionFile] = []
        try:
            directory.mkdir(mode=0o700)
            for index, memory_range in enumerate(sorted(layout_ranges)):
                path = directory / f"region-{index}-gpa-{memory_range.gpa:#x}.mem"
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                regions.append(RegionFile(memory_range.gpa, memory_range.length, str(path), fd))
                os.ftruncate(fd, memory_range.length)  # sparse: reads as zero, allocates nothing
            layout = MemoryLayout(regions, page_size)
            return cls(session_id, token, migration_id, directory, layout, max_batch_bytes)
        except BaseException as error:  # nothing of a failed session stays behind
            for region in regions:
                os.close(region.fd)
            shutil.rmtree(directory, ignore_errors=True)
            if isinstance(error, OSError):
                raise ReceiverError(Reason.STORAGE, f"cannot create destination memory: {error}") from error
            raise

    def _locate(self, ranges: np.ndarray, what: str) -> tuple[list[int], list[int]]:
        """Region index and file offset of every range; refuses any byte outside the layout."""
        if not len(ranges):
            return [], []
        gpas, lengths = ranges[:, 0], ranges[:, 1]
        if not lengths.all():
            raise ReceiverError(Reason.MALFORMED, f"empty range in {what}")
        ends = gpas + lengths  # uint64: wraps past 2**64, caught next
        if (ends < gpas).any():
            raise ReceiverError(Reason.OUT_OF_RANGE, f"a range in {what} runs past the 64-bit address space")
        index = np.searchsorted(self._region_starts, gpas, side="right").astype(np.int64) - 1
        inside = index >= 0
        clipped = np.maximum(index, 0)
        inside &= ends <= self._region_ends[clipped]
        if not inside.all():
            bad = int(np.flatnonzero(~inside)[0])
            raise ReceiverError(
                Reason.OUT_OF_RANGE,
                f"range [{int(gpas[bad]):#x}, {int(gpas[bad]) + int(lengths[bad]):#x}) in {what} "
                "is outside the destination memory",
            )
        offsets = gpas - self._region_starts[clipped]
        return clipped.tolist(), offsets.tolist()

    def _check_active(self) -> None:
        if self.state is SessionState.EXPIRED:
            raise ReceiverError(
                Reason.EXPIRED,
                f"session expired after {self.expired_after:g} s without traffic; its destination was dropped",
            )
        if self.state is not SessionState.ACTIVE:
            raise ReceiverError(Reason.NOT_ACTIVE, f"session is {self.state.value}; no more pages accepted")

    def stream_opened(self) -> None:
        with self._lock:
            self._streams += 1
            self.last_activity = time.monotonic()

    def stream_closed(self) -> None:
        with self._lock:
            self._streams -= 1
            self.last_activity = time.monotonic()

    def expire_if_idle(self, idle_seconds: float) -> bool:
        """Abort a session nobody is using: no open stream, no write, no call for idle_seconds.
        An open stream keeps it alive (gRPC keepalive ends streams of dead peers)."""
        with self._lock:
            idle = time.monotonic() - self.last_activity
            if self.state is not SessionState.ACTIVE or self._streams or self._writers or idle < idle_seconds:
                return False
            self.state = SessionState.EXPIRED
            self.expired_after = idle_seconds
            self.layout.close()
            shutil.rmtree(self.directory, ignore_errors=True)
            return True

    def touch(self) -> None:
        with self._lock:
            self.last_activity = time.monotonic()

    def apply(self, batch: DecodedBatch) -> tuple[int, int]:
        """Validate the whole batch, then write it. Returns (payload bytes written, bytes zeroed)."""
        self._check_active()
        data = batch.data
        if len(data) > self.max_batch_bytes:
            raise ReceiverError(
                Reason.OVERSIZED, f"batch payload {len(data)} bytes exceeds the limit {self.max_batch_bytes}"
            )
        ranges, zero_ranges = batch.ranges, batch.zero_ranges
        lengths = ranges[:, 1]
        # Bound each length before summing, so a hostile table cannot wrap the sum.
        if (lengths > len(data)).any() or int(lengths.sum()) != len(data):
            declared = sum(int(x) for x in lengths.tolist())
            raise ReceiverError(
                Reason.LENGTH_MISMATCH, f"ranges describe {declared} bytes but the payload has {len(data)}"
            )
        regions, offsets = self._locate(ranges, "ranges")
        zero_regions, zero_offsets = self._locate(zero_ranges, "zero_ranges")
        everything = np.concatenate((ranges, zero_ranges))
        if len(everything) > 1:
            ordered = everything[np.argsort(everything[:, 0], kind="stable")]
            if (ordered[1:, 0] < ordered[:-1, 0] + ordered[:-1, 1]).any():
                raise ReceiverError(Reason.OVERLAP, "ranges in the batch overlap")
        batch_id = batch.header.batch_id
        with self._lock:
            self._check_active()  # an abort may have raced this batch
            if batch_id and (batch_id in self._applied or batch_id in self._applying):
                # A resend: wait until the first copy is written, then acknowledge again.
                self._lock.wait_for(lambda: batch_id not in self._applying)
                self.last_activity = time.monotonic()
                return len(data), 0
            if batch_id:
                self._applying.add(batch_id)
            self._writers += 1
            self.last_activity = time.monotonic()
        zeroed = 0
        written = False
        fault = None
        try:
            self._write(data, regions, offsets, lengths.tolist())
            for index, offset, length in zip(zero_regions, zero_offsets, zero_ranges[:, 1].tolist(), strict=True):
                zeroed += self._zero_received(index, offset, length)
            written = True
        except OSError as error:
            if (fault := storage_fault(error, self.directory)) is None:
                raise
        finally:
            with self._lock:
                self._writers -= 1
                self.last_activity = time.monotonic()
                self._applying.discard(batch_id)
                if written:  # a failed write is not applied: its resend must write again
                    self.written_bytes += len(data)
                    self.batches += 1
                    if batch_id:
                        self._applied.add(batch_id)
                self._lock.notify_all()
        if fault is not None:
            with contextlib.suppress(ReceiverError):  # another batch's fault may have aborted it
                self.abort()
            raise fault
        return len(data), zeroed

    def _write(self, data: memoryview, regions: list[int], offsets: list[int], lengths: list[int]) -> None:
        files = self.layout.regions
        position = 0
        for index, offset, length in zip(regions, offsets, lengths, strict=True):
            _write_all(files[index].fd, data[position : position + length], offset)
            position += length
        self._mark_received(np.array(regions), np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64))

    def _mark_received(self, regions: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Flag every page a range touched, with one vectorised pass per region."""
        page_size = self.layout.page_size
        for index in np.unique(regions).tolist():
            mine = regions == index
            first = offsets[mine] // page_size
            end = -(-(offsets[mine] + lengths[mine]) // page_size)
            low, high = int(first.min()), int(end.max())
            # A difference array over the batch's span: +1 where a range's pages
            # start, -1 past its last page; pages with a positive prefix sum were written.
            steps = np.zeros(high - low + 1, dtype=np.int32)
            np.add.at(steps, first - low, 1)
            np.add.at(steps, end - low, -1)
            self._received[index][low:high] |= np.cumsum(steps[:-1]) > 0

    def _quiesce(self) -> None:
        """Wait (holding the lock) until no batch is being written."""
        self._lock.wait_for(lambda: self._writers == 0)

    def _zero_received(self, index: int, offset: int, length: int) -> int:
        """Zero the parts of a range that earlier batches wrote; leave the rest untouched.
        Returns the bytes zeroed."""
        page_size = self.layout.page_size
        region = self.layout.regions[index]
        first_page = offset // page_size
        received = self._received[index][first_page : -(-(offset + length) // page_size)]
        padded = np.concatenate(([False], received, [False]))
        edges = np.flatnonzero(padded[1:] != padded[:-1]).tolist()
        zeroed = 0
        for run_start, run_stop in zip(edges[0::2], edges[1::2], strict=True):
            start = max(offset, (first_page + run_start) * page_size)
            stop = min(offset + length, (first_page + run_stop) * page_size)
            _write_zeros(region.fd, start, stop - start)
            zeroed += stop - start
        return zeroed

    def complete(self, transmitted_bytes: int, batches: int, digest: bytes) -> tuple[bool, int]:
        """Check the sender's totals (and digest); returns (verified, allocated bytes)."""
        with self._lock:
            self._check_active()
            self._quiesce()
            if self.written_bytes != transmitted_bytes or self.batches != batches:
                raise ReceiverError(
                    Reason.TOTALS_MISMATCH,
                    f"sender reports {transmitted_bytes} bytes in {batches} batches, "
                    f"receiver wrote {self.written_bytes} bytes in {self.batches} batches",
                )
            verified = False
            if digest:
                local = memory_digest(self.layout)
                if local != digest:
                    raise ReceiverError(
                        Reason.DIGEST_MISMATCH,
                        f"destination memory digest {local.hex()} differs from the source's {digest.hex()}",
                    )
                verified = True
            for region in self.layout.regions:
                os.fsync(region.fd)  # a no-op on tmpfs; durability on disk-backed memory
            self.state = SessionState.COMPLETED
            allocated = self.allocated_bytes()
            self.layout.close()
            return verified, allocated

    def abort(self) -> None:
        """Drop the destination memory; a completed session's memory is kept."""
        with self._lock:
            self._check_active()
            self.state = SessionState.ABORTED
            self._quiesce()
            self.layout.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def allocated_bytes(self) -> int:
        return sum(os.stat(r.path).st_blocks * 512 for r in self.layout.regions)

    @property
    def destination_regions(self) -> list[RegionFile]:
        return self.layout.regions


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = memoryview(_ZERO_BLOCK)
    for start in range(offset, offset + length, len(zeros)):
        _write_all(fd, zeros[: min(len(zeros), offset + length - start)], start)
