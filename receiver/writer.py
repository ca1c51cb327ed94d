"""One process's handle on a session's destination memory: validation and writes.

Every data worker (and, in tests, the control process) opens the destination
files the control process created, by the paths in the SessionRecord, and the
session's received-pages maps: one byte per page in a small shared file, mapped
by every process, so that a page written through one worker and named by a zero
record of a later iteration through another is zeroed (pages never written are
zero already and stay unallocated). A batch is validated completely before its
first byte is written, so a refused batch changes nothing.

Ordering across processes needs no lock: a page's flag is set before its batch
is acknowledged, and the sender names a page in a zero record only in a later
iteration, after every acknowledgement of the earlier one (its barrier).

Two ways to write (the control process picks one per session, see WriteMode):
pwrite(2) costs the least CPU, but on tmpfs a write holds the file's inode lock
for the whole copy and page allocation, so the workers of one session write one at
a time (they take turns on a sleeping lock, receiver/write_turns.py, rather than
spin on that one): on a 16-core host the receiver stopped at ~2.1 GiB/s whatever
the number of connections. Stores through a shared mapping fault pages in under the page lock
only, so workers write in parallel (benchmarks/dest_writes.py measures both); the
kernel clears each new page before the copy, which is why pwrite stays the choice
where there are few workers. A range's pages are allocated first with
madvise(MADV_POPULATE_WRITE), which reports a full tmpfs or an empty huge-page pool
as an error (turned into ENOSPC) where a plain store would raise SIGBUS.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import operator
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livemig.common.guest_memory import MemoryLayout, RegionFile
from livemig.common.wire import DecodedBatch
from livemig.receiver.batch_ids import DEFAULT_MAX_UNSETTLED_BATCHES, BatchIds
from livemig.receiver.errors import Reason, ReceiverError, storage_error
from livemig.receiver.write_turns import WriteTurns

_ZERO_BLOCK = bytes(1 << 20)
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14; the constant is in Python 3.13

ACTIVE = "active"
# Up to this many ranges a batch's pages are flagged received range by range.
FEW_RANGES = 8


class WriteMode:
    """How data workers write destination memory (see the module docstring)."""

    AUTO = "auto"
    PWRITE = "pwrite"
    MAPPED = "mapped"  # (cli/main.py lists the three for --write-mode)
    # From this many writers at once (data workers a session's streams land on), stores
    # through a mapping outrun pwrite writers taking turns (benchmarks/dest_writes.py).
    MAPPED_FROM_WORKERS = 3


def mapped_writes_supported() -> bool:
    """Can this kernel populate a shared mapping (MADV_POPULATE_WRITE)? Without it a
    full tmpfs would kill a worker with SIGBUS instead of failing one batch."""
    try:
        with mmap.mmap(-1, mmap.PAGESIZE) as probe:
            probe.madvise(MADV_POPULATE_WRITE, 0, mmap.PAGESIZE)
    except (OSError, ValueError):
        return False
    return True


def usable_write_mode(preferred: str) -> str:
    """--write-mode as this kernel allows it (checked once, at start): auto without
    MADV_POPULATE_WRITE is pwrite; mapped without it is an error."""
    if preferred == WriteMode.PWRITE or mapped_writes_supported():
        return preferred
    if preferred == WriteMode.MAPPED:
        raise RuntimeError("mapped writes need madvise(MADV_POPULATE_WRITE), Linux 5.14 or later")
    return WriteMode.PWRITE


def session_write_mode(mode: str, data_workers: int, connections: int) -> str:
    """One session's write mode. Its streams spread over the data workers, so
    min(workers, connections) of them write at once; from MAPPED_FROM_WORKERS
    writers on, parallel stores beat one pwrite writer at a time. A sender that
    does not say its connections (0) is taken to use every worker."""
    if mode != WriteMode.AUTO:
        return mode
    writers = min(data_workers, connections) if connections else data_workers
    return WriteMode.MAPPED if writers >= WriteMode.MAPPED_FROM_WORKERS else WriteMode.PWRITE


def file_write_mode(preferred: str, fd: int) -> str:
    """`preferred`, unless the file takes no write(2) at all (hugetlbfs): then mapped."""
    if preferred == WriteMode.PWRITE:
        try:
            os.pwrite(fd, b"", 0)
        except OSError as error:
            if error.errno == errno.EINVAL and mapped_writes_supported():
                return WriteMode.MAPPED
            raise
    return preferred


@dataclass(frozen=True, slots=True)
class RecordRegion:
    gpa: int
    length: int
    path: str  # the destination file
    received_map: str  # one byte per page: has a batch written data there?


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What every process needs to serve a session; written by the control process only.

    Stored under the receiver's private state folder, named by a hash of the token
    (the token itself is not stored), so a data worker that has not seen the
    session yet (or was restarted) finds it without asking the control process.
    """

    session_id: str
    migration_id: str
    owner: tuple[bytes, ...] | None  # certificate identities of the preparing client (mutual TLS)
    page_size: int
    max_batch_bytes: int
    regions: tuple[RecordRegion, ...]
    state: str = ACTIVE  # or completed / aborted / expired
    expired_after: float = 0.0
    write_mode: str = WriteMode.PWRITE
    max_unsettled_batches: int = DEFAULT_MAX_UNSETTLED_BATCHES  # receiver/batch_ids.py

    def dump(self, path: Path) -> None:
        """Atomically (write, then rename): a reader sees the old record or the new one."""
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(self))
        os.replace(partial, path)

    @staticmethod
    def load(path: Path) -> SessionRecord:
        return pickle.loads(path.read_bytes())


def refusal_for_state(state: str, expired_after: float) -> ReceiverError:
    if state == "expired":
        return ReceiverError(
            Reason.EXPIRED, f"session expired after {expired_after:g} s without traffic; its destination was dropped"
        )
    return ReceiverError(Reason.NOT_ACTIVE, f"session is {state}; no more pages accepted")


class SessionWriter:
    """Destination memory of one session as seen by one process."""

    def __init__(self, record: SessionRecord) -> None:
        self.record = record
        self.session_id = record.session_id
        self.migration_id = record.migration_id
        self.owner = record.owner
        self.max_batch_bytes = record.max_batch_bytes
        self.state = record.state
        self.expired_after = record.expired_after
        self._lock = threading.Condition()
        self._writers = 0
        # Batch id -> the highest attempt written here, and the ids being written now. A
        # sender that lost a stream resends its unacknowledged batches (the same frames),
        # usually to the same worker: each lands once. One whose connection process died
        # reads them again under a higher attempt: that one is written over the first.
        # Ids the sender settled are forgotten (receiver/batch_ids.py).
        self._applied: BatchIds[int] = BatchIds(record.max_unsettled_batches)
        self._applying: set[int] = set()
        regions: list[RegionFile] = []
        self._maps: list[mmap.mmap] = []
        self._received: list[np.ndarray] = []
        self._destinations: list[mmap.mmap] = []  # mapped write mode: one shared mapping per region
        self._destination_views: list[memoryview] = []
        self._turns: list[WriteTurns] = []
        if self.state != ACTIVE:
            self.layout = MemoryLayout([RegionFile(r.gpa, r.length, r.path) for r in record.regions], record.page_size)
            return
        try:
            for region in record.regions:
                fd = os.open(region.path, os.O_RDWR | os.O_CLOEXEC)
                regions.append(RegionFile(region.gpa, region.length, region.path, fd))
                pages = region.length // record.page_size
                map_fd = os.open(region.received_map, os.O_RDWR | os.O_CLOEXEC)
                try:
                    shared = mmap.mmap(map_fd, pages)
                finally:
                    os.close(map_fd)
                self._maps.append(shared)
                self._received.append(np.frombuffer(shared, dtype=np.bool_))
                if record.write_mode == WriteMode.MAPPED:
                    destination = mmap.mmap(regions[-1].fd, region.length)
                    self._destinations.append(destination)
                    self._destination_views.append(memoryview(destination))
        except OSError:
            for region in regions:
                os.close(region.fd)
            self._close_maps()
            raise
        self.layout = MemoryLayout(regions, record.page_size)
        # pwrite writers of a file take turns across workers (receiver/write_turns.py)
        self._turns = [WriteTurns(region.fd) for region in regions]
        self._region_starts = np.array([r.gpa for r in self.layout.regions], dtype=np.uint64)
        self._region_ends = np.array([r.gpa + r.length for r in self.layout.regions], dtype=np.uint64)

    # -- validation ----------------------------------------------------------------

    def check_active(self) -> None:
        if self.state != ACTIVE:
            raise refusal_for_state(self.state, self.expired_after)

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

    # -- writes ----------------------------------------------------------------------

    def apply(self, batch: DecodedBatch) -> tuple[int, int, bool]:
        """Validate the whole batch, then write it.

        Returns (payload bytes, bytes zeroed, written now); a resend of a batch this
        process already applied (that attempt or a later one), and a late copy of a
        settled batch (whose pages may hold newer bytes by now), are acknowledged
        again without writing.
        """
        self.check_active()
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
        batch_id, attempt, settled = batch.header.batch_id, batch.header.attempt, batch.header.settled_below
        if settled > batch_id:
            raise ReceiverError(Reason.MALFORMED, f"settled_below {settled} is above the batch's own id {batch_id}")
        with self._lock:
            self.check_active()  # an end may have raced this batch
            if batch_id:
                self._applied.settle(settled)
                # One writing of a batch id at a time; then a resend of what is written
                # already (or of an earlier attempt) is only acknowledged again.
                self._lock.wait_for(lambda: batch_id not in self._applying)
                self.check_active()
                if self._applied.is_settled(batch_id) or self._applied.get(batch_id, -1) >= attempt:
                    return len(data), 0, False
                if not self._applied.has_room_for(batch_id):
                    raise ReceiverError(
                        Reason.LIMIT,
                        f"more than {self._applied.limit} batches sent above the settled mark "
                        f"{self._applied.settled} (--max-unsettled-batches)",
                    )
                self._applying.add(batch_id)
            self._writers += 1
        zeroed = 0
        written = False
        try:
            try:
                self._write(data, regions, offsets, lengths.tolist())
                for index, offset, length in zip(zero_regions, zero_offsets, zero_ranges[:, 1].tolist(), strict=True):
                    zeroed += self._zero_received(index, offset, length)
            except OSError as error:
                raise storage_error(error, "writing destination memory") from error
            written = True
        finally:
            with self._lock:
                self._writers -= 1
                self._applying.discard(batch_id)
                if written and batch_id:  # a failed write is not applied: its resend must write again
                    self._applied.put(batch_id, attempt)
                self._lock.notify_all()
        return len(data), zeroed, True

    def _write(self, data: memoryview, regions: list[int], offsets: list[int], lengths: list[int]) -> None:
        position = 0
        if self._destinations:
            for index, offset, length in zip(regions, offsets, lengths, strict=True):
                _populate(self._destinations[index], offset, length)
                self._destination_views[index][offset : offset + length] = data[position : position + length]
                position += length
        else:
            files = self.layout.regions
            ranges = zip(regions, offsets, lengths, strict=True)
            for index, run in itertools.groupby(ranges, key=operator.itemgetter(0)):
                with self._turns[index]:  # one turn for a run of ranges in one file
                    for _index, offset, length in run:
                        _write_all(files[index].fd, data[position : position + length], offset)
                        position += length
        self._mark_received(regions, offsets, lengths)

    def _mark_received(self, regions: list[int], offsets: list[int], lengths: list[int]) -> None:
        """Flag every page a range touched: range by range for a few ranges (slices cost
        less than numpy's set-up), else with one vectorised pass per region."""
        page_size = self.layout.page_size
        if len(regions) <= FEW_RANGES:
            for index, offset, length in zip(regions, offsets, lengths, strict=True):
                self._received[index][offset // page_size : -(-(offset + length) // page_size)] = True
            return
        regions, offsets, lengths = (
            np.array(regions),
            np.array(offsets, dtype=np.int64),
            np.array(lengths, dtype=np.int64),
        )
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
            if self._destinations:
                _store_zeros(self._destination_views[index], start, stop - start)
            else:
                with self._turns[index]:
                    _write_zeros(region.fd, start, stop - start)
            zeroed += stop - start
        return zeroed

    # -- the end -------------------------------------------------------------------

    def end(self, state: str, expired_after: float = 0.0) -> None:
        """No more batches: returns once no write is in flight (files stay open: release())."""
        with self._lock:
            if self.state == ACTIVE:
                self.state = state
                self.expired_after = expired_after
            self._lock.wait_for(lambda: self._writers == 0)

    def release(self) -> None:
        """Close files and maps of an ended session. Apart from end() because unmapping a
        populated mapping costs about 0.5 us a page: a data worker reports the end first, so
        the control process need not wait for it."""
        with self._lock:
            if self.state == ACTIVE:
                raise RuntimeError("release() before end()")
            self.layout.close()
            self._received = []
            self._close_maps()

    def _close_maps(self) -> None:
        for view in self._destination_views:
            view.release()
        self._destination_views = []
        for shared in [*self._maps, *self._destinations]:
            with contextlib.suppress(BufferError):  # a view still alive: the map goes with it
                shared.close()
        self._maps = []
        self._destinations = []


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written (a write may be short). The first try
    takes `data` as it is: a scattered batch calls this once per range (~500 times
    per 8 MiB at 50 % of pages), and a slice per call cost ~5 % of those writes."""
    done = os.pwrite(fd, data, offset)
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _write_zeros(fd: int, offset: int, length: int) -> None:
    zeros = memoryview(_ZERO_BLOCK)
    for start in range(offset, offset + length, len(zeros)):
        _write_all(fd, zeros[: min(len(zeros), offset + length - start)], start)


def _populate(destination: mmap.mmap, offset: int, length: int) -> None:
    """Allocate the pages of [offset, offset + length) before storing into them."""
    start = offset - offset % mmap.PAGESIZE
    try:
        destination.madvise(MADV_POPULATE_WRITE, start, offset + length - start)
    except OSError as error:
        if error.errno == errno.EFAULT:  # the store would have raised SIGBUS: no page to be had
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from error
        raise


def _store_zeros(view: memoryview, offset: int, length: int) -> None:
    zeros = memoryview(_ZERO_BLOCK)
    for start in range(offset, offset + length, len(zeros)):
        size = min(len(zeros), offset + length - start)
        view[start : start + size] = zeros[:size]
