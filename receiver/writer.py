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

Two ways to write, one per session (receiver/write_mode.py says which and why):
pwrite(2), with the session's writers taking turns per file on a sleeping lock
(receiver/write_turns.py), or stores through a shared mapping. A range's pages are
allocated first with madvise(MADV_POPULATE_WRITE), which reports a full tmpfs or
an empty huge-page pool as an error (turned into ENOSPC) where a plain store
would raise SIGBUS.

A compressed batch (common/compression.py) is validated like a raw one against
its declared raw_length (a known method, within the batch limit, equal to the
ranges' total), then decompressed, bounded to that length, before anything is
written.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import threading

import numpy as np

from livemig.common.compression import KNOWN, CompressionError, decompress
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.wire import DecodedBatch
from livemig.receiver.errors import Reason, ReceiverError, refusal_for_state, storage_error
from livemig.receiver.session_record import ACTIVE, SessionRecord
from livemig.receiver.shared_batch_ids import SharedBatchIds, Verdict
from livemig.receiver.write_mode import MADV_POPULATE_WRITE, WriteMode
from livemig.receiver.write_turns import WriteTurns

_ZERO_BLOCK = bytes(1 << 20)
# Up to this many ranges a batch's pages are flagged received range by range.
FEW_RANGES = 8


class SessionWriter:
    """Destination memory of one session as seen by one process.

    A region's file (and, written through mappings, its mapping) is opened the first
    time a batch touches it: a session may have up to MAX_REGIONS regions, and a
    worker that held every one of every session it served open ran out of file
    descriptors (issue 20: 8016 fds and 4348 mappings in one worker). The
    received-pages map is one file and one mapping for the whole session.
    """

    def __init__(self, record: SessionRecord) -> None:
        self.record = record
        self.session_id = record.session_id
        self.migration_id = record.migration_id
        self.owner = record.owner
        self.max_batch_bytes = record.max_batch_bytes
        self.state = record.state
        self.expired_after = record.expired_after
        self.page_size = record.page_size
        self._lock = threading.Condition()
        self._writers = 0
        # Batch ids being written by this process's threads: one writing of an id at a
        # time here; across processes the shared table orders them (shared_batch_ids.py).
        self._applying: set[int] = set()
        self._open_lock = threading.Lock()
        count = len(record.regions)
        self._fds: list[int] = [-1] * count
        self._turns: list[WriteTurns | None] = [None] * count
        self._destinations: list[mmap.mmap | None] = [None] * count
        self._destination_views: list[memoryview | None] = [None] * count
        self._mapped = record.write_mode == WriteMode.MAPPED
        self._map_fd = -1
        self._map: mmap.mmap | None = None
        self._received = np.zeros(0, dtype=np.bool_)
        self._ids: SharedBatchIds | None = None
        if self.state != ACTIVE:
            return
        try:
            self._map_fd = os.open(record.received_map, os.O_RDWR | os.O_CLOEXEC)
            self._map = mmap.mmap(self._map_fd, record.total_pages)
            self._received = np.frombuffer(self._map, dtype=np.bool_)
            self._ids = SharedBatchIds(record.batch_ids, record.max_unsettled_batches)
        except OSError:
            self._close_files()
            raise
        self._region_starts = np.array([r.gpa for r in record.regions], dtype=np.uint64)
        self._region_ends = np.array([r.gpa + r.length for r in record.regions], dtype=np.uint64)
        self._first_pages = np.array([r.first_page for r in record.regions], dtype=np.int64)

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

    # -- regions, opened when first touched --------------------------------------------

    def _region_fd(self, index: int) -> int:
        fd = self._fds[index]
        if fd >= 0:
            return fd
        with self._open_lock:
            if self._fds[index] < 0:
                region = self.record.regions[index]
                fd = os.open(region.path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    if self._mapped:
                        destination = mmap.mmap(fd, region.length)
                        self._destinations[index] = destination
                        self._destination_views[index] = memoryview(destination)
                    self._turns[index] = WriteTurns(fd)
                except BaseException:
                    os.close(fd)
                    raise
                self._fds[index] = fd
            return self._fds[index]

    def _view(self, index: int) -> memoryview:
        self._region_fd(index)
        view = self._destination_views[index]
        assert view is not None
        return view

    def _turn(self, index: int) -> WriteTurns:
        self._region_fd(index)
        turns = self._turns[index]
        assert turns is not None
        return turns

    # -- writes ----------------------------------------------------------------------

    def apply(self, batch: DecodedBatch) -> tuple[int, int, bool]:
        """Validate the whole batch, then write it.

        Returns (payload bytes, bytes zeroed, written now); a resend of a batch this
        session already applied (that attempt or a later one, through any worker), and a
        late copy of a settled batch (whose pages may hold newer bytes by now), are
        acknowledged again without writing.
        """
        self.check_active()
        data = batch.data
        if len(data) > self.max_batch_bytes:
            raise ReceiverError(
                Reason.OVERSIZED, f"batch payload {len(data)} bytes exceeds the limit {self.max_batch_bytes}"
            )
        raw_length = self._raw_length(batch)
        ranges, zero_ranges = batch.ranges, batch.zero_ranges
        lengths = ranges[:, 1]
        # Bound each length before summing, so a hostile table cannot wrap the sum.
        if (lengths > raw_length).any() or int(lengths.sum()) != raw_length:
            declared = sum(int(x) for x in lengths.tolist())
            if batch.header.compression:
                raise ReceiverError(
                    Reason.COMPRESSION, f"ranges describe {declared} bytes but raw_length declares {raw_length}"
                )
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
        if batch.header.compression:  # last: every cheap check first, then the CPU
            try:
                data = memoryview(decompress(batch.header.compression, data, raw_length))
            except CompressionError as error:
                raise ReceiverError(Reason.COMPRESSION, str(error)) from error
        with self._lock:
            self.check_active()  # an end may have raced this batch
            if batch_id:
                # One writing of a batch id at a time in this process.
                self._lock.wait_for(lambda: batch_id not in self._applying)
                self.check_active()
                self._applying.add(batch_id)
            self._writers += 1
        claimed = False
        written = False
        try:
            if batch_id:
                assert self._ids is not None
                if self._ids.claim(batch_id, attempt, settled, self.check_active) is Verdict.SKIP:
                    return len(data), 0, False
                claimed = True
            zeroed = 0
            try:
                self._write(data, regions, offsets, lengths.tolist())
                for index, offset, length in zip(zero_regions, zero_offsets, zero_ranges[:, 1].tolist(), strict=True):
                    zeroed += self._zero_received(index, offset, length)
            except OSError as error:
                raise storage_error(error, "writing destination memory") from error
            written = True
        finally:
            if claimed:
                assert self._ids is not None
                self._ids.release(batch_id, attempt, written)  # a failed write is not applied
            with self._lock:
                self._writers -= 1
                self._applying.discard(batch_id)
                self._lock.notify_all()
        return len(data), zeroed, True

    def _raw_length(self, batch: DecodedBatch) -> int:
        """The payload's length once decoded: its own when raw; a compressed batch's declared
        raw_length, refused unless its method is known and it fits one batch (so that
        decompression never allocates more than a batch)."""
        header = batch.header
        if header.compression == pb.COMPRESSION_NONE:
            if header.raw_length not in (0, len(batch.data)):
                raise ReceiverError(
                    Reason.COMPRESSION, f"raw batch of {len(batch.data)} bytes declares raw_length {header.raw_length}"
                )
            return len(batch.data)
        if header.compression not in KNOWN:
            raise ReceiverError(Reason.COMPRESSION, f"unknown compression method {header.compression}")
        if header.raw_length > self.max_batch_bytes:
            raise ReceiverError(
                Reason.COMPRESSION,
                f"compressed batch declares raw_length {header.raw_length}, above the limit {self.max_batch_bytes}",
            )
        return header.raw_length

    def _write(self, data: memoryview, regions: list[int], offsets: list[int], lengths: list[int]) -> None:
        position = 0
        if self._mapped:
            for index, offset, length in zip(regions, offsets, lengths, strict=True):
                view = self._view(index)
                destination = self._destinations[index]
                assert destination is not None
                _populate(destination, offset, length)
                view[offset : offset + length] = data[position : position + length]
                position += length
        else:
            write = os.pwrite
            for index, first, stop in _region_segments(regions):
                fd = self._region_fd(index)
                with self._turn(index):  # one turn for a run of ranges in one file
                    # The loop a scattered batch spends its Python on (~1 000 ranges per
                    # 8 MiB at 50 % of pages): one slice and one pwrite per range.
                    for offset, length in zip(offsets[first:stop], lengths[first:stop], strict=True):
                        end = position + length
                        done = write(fd, data[position:end], offset)
                        if done != length:  # a short write: the rest
                            _write_all(fd, data[position + done : end], offset + done)
                        position = end
        self._mark_received(regions, offsets, lengths)

    def _mark_received(self, regions: list[int], offsets: list[int], lengths: list[int]) -> None:
        """Flag every page a range touched, and no other: range by range for a few ranges
        (slices cost less than numpy's set-up), else the touched pages' indices at once.
        Work and memory follow the batch, never the span it covers: a difference array
        over the span cost a worker 157 MiB (and 10.8 MB of map) for nine one-byte ranges
        spread over 39 GiB (issue 20)."""
        page_size = self.page_size
        if len(regions) <= FEW_RANGES:
            for index, offset, length in zip(regions, offsets, lengths, strict=True):
                base = int(self._first_pages[index])
                self._received[base + offset // page_size : base + -(-(offset + length) // page_size)] = True
            return
        base = self._first_pages[np.array(regions)]
        offsets_, lengths_ = np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64)
        first = base + offsets_ // page_size
        counts = -(-(offsets_ + lengths_) // page_size) - offsets_ // page_size
        # Every touched page's index (each range: its first page, then the next ones): at
        # most 2 pages per range more than the payload's pages.
        starts = np.cumsum(counts) - counts  # where each range's pages begin in `pages`
        pages = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(first - starts, counts)
        self._received[pages] = True

    def _zero_received(self, index: int, offset: int, length: int) -> int:
        """Zero the parts of a range that earlier batches wrote; leave the rest untouched.
        Returns the bytes zeroed. Only the map's data segments are looked at, a piece at a
        time: reading a hole of a shared tmpfs mapping allocates it, and a zero record may
        span a huge region."""
        page_size = self.page_size
        base = int(self._first_pages[index])
        first_page = base + offset // page_size
        end_page = base + -(-(offset + length) // page_size)
        zeroed = 0
        for piece_start, piece_end in _data_pieces(self._map_fd, first_page, end_page):
            received = self._received[piece_start:piece_end]
            padded = np.concatenate(([False], received, [False]))
            edges = np.flatnonzero(padded[1:] != padded[:-1]).tolist()
            for run_start, run_stop in zip(edges[0::2], edges[1::2], strict=True):
                start = max(offset, (piece_start + run_start - base) * page_size)
                stop = min(offset + length, (piece_start + run_stop - base) * page_size)
                if self._mapped:
                    _store_zeros(self._view(index), start, stop - start)
                else:
                    fd = self._region_fd(index)
                    with self._turn(index):
                        _write_zeros(fd, start, stop - start)
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
            self._close_files()

    def _close_files(self) -> None:
        for index, view in enumerate(self._destination_views):
            if view is not None:
                view.release()
                self._destination_views[index] = None
        self._received = np.zeros(0, dtype=np.bool_)
        for shared in [self._map, *self._destinations]:
            if shared is not None:
                with contextlib.suppress(BufferError):  # a view still alive: the map goes with it
                    shared.close()
        self._map = None
        self._destinations = [None] * len(self._destinations)
        for index, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[index] = -1
        if self._map_fd >= 0:
            os.close(self._map_fd)
            self._map_fd = -1
        if self._ids is not None:
            self._ids.close()
            self._ids = None


ZERO_PIECE_PAGES = 1 << 20  # map bytes looked at at once by a zero record (1 MiB)


def _data_pieces(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) of the map file cut to its data segments (holes: pages never received,
    skipped unread), in pieces of at most ZERO_PIECE_PAGES."""
    pieces: list[tuple[int, int]] = []
    position = start
    while position < end:
        try:
            data = os.lseek(fd, position, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only holes from here on
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        for piece in range(data, hole, ZERO_PIECE_PAGES):
            pieces.append((piece, min(piece + ZERO_PIECE_PAGES, hole)))
        position = hole
    return pieces


def _region_segments(regions: list[int]) -> list[tuple[int, int, int]]:
    """(region index, first, stop) of each run of ranges in one region, in order."""
    if not regions:
        return []
    if regions[0] == regions[-1] and len(set(regions)) == 1:  # nearly always: one region
        return [(regions[0], 0, len(regions))]
    indices = np.asarray(regions)
    bounds = [0, *(np.flatnonzero(indices[1:] != indices[:-1]) + 1).tolist(), len(regions)]
    return [(regions[first], first, stop) for first, stop in itertools.pairwise(bounds)]


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite until every byte is written (a write may be short)."""
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
