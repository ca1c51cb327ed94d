"""Read, scan and frame one chunk of guest memory: the pure part of a connection.

No gRPC and no threads here: given a chunk (ranges of guest memory) the builder
reads it from the guest's files, finds its zero pages (with skipping on) and
frames the rest as one PageBatch. It runs inside a connection process, so page
data goes from the guest memory file to the socket without crossing processes;
only the chunk's ranges come in and its outcome (counters) goes out.

Where every page of a chunk is in memory, it is scanned where it lies, through a
read-only mapping of the guest's file (common/resident_window.py), and only its
data pages are copied, once, into the frame; otherwise (holes, pages swapped out)
pages are read straight into the message that will be sent (common/wire.py,
FrameInPlace), framed as if every page held data. When that is so (always
without skipping, and for every chunk of a fully written guest) the frame is
ready as read. A chunk with zero pages instead gets a second, smaller frame of
only its data pages, copied out of the first (which is dropped unsent).

A chunk with no zero page costs one copy either way, but the mapping adds its
page tables: mincore, populate and munmap, about 0.5-0.8 ms a chunk of 8 MiB. So
after a chunk that had no zero page the builder reads the next with pread, as
dense memory comes in runs; the first chunk with zero pages sends it back to the
mapping. A wrong guess costs one chunk a second copy of its data pages. 2 GiB
written in full, 2 connections, 8 rounds interleaved: sender 0.895 -> 0.865 CPU s
per GiB, 2413 -> 2188 ms (docs/benchmarks.md, stop 17).

With compression on (TransferPlan.compression) a chunk's payload is compressed
when that pays (common/compression.py) and framed anew around the compressed
bytes; one that does not shrink enough goes out raw as above.

A chunk may cover more memory than a batch may carry (sparse memory gets wider
chunks, sender/chunk_spans.py). Where its data pages come to more than the limit
(TransferPlan.chunk_bytes), the batch ends on the page boundary where the limit is
reached: it carries, describes and counts only the memory below that boundary,
and the rest comes back as BuiltBatch.remainder for the pool to send in a later
chunk. The cut never splits a page, so every page is counted once, in the batch
that carried it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from livemig.common.compression import PayloadCompressor
from livemig.common.guest_memory import MemoryLayout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange, align_down, ranges_from_array, ranges_to_array
from livemig.common.resident_window import ResidentWindow
from livemig.common.wire import GRPC_MESSAGE_PREFIX, FrameInPlace, encode_batch
from livemig.common.zeropages import (
    EMPTY_RANGES,
    ZeroScan,
    count_pages,
    count_pages_in,
    merge_contiguous,
    scan_guest_range,
    scan_pages,
    scan_zero_pages,
)
from livemig.sender.chunks import Chunk, ChunkOutcome

# Chunks of at most this many ranges are scanned in place when resident (a window each:
# iteration 0 and runs of dirty pages); more (scattered dirty pages) are gathered by pread.
MAPPED_MAX_RANGES = 4


@dataclass(frozen=True, slots=True)
class TransferPlan:
    """What every connection of one migration shares and never changes."""

    session_token: str
    layout: MemoryLayout
    page_size: int
    chunk_bytes: int
    skip_zero_pages: bool
    compression: int = pb.COMPRESSION_NONE


@dataclass(slots=True)
class BuiltBatch:
    """A chunk made ready: its frame (None when nothing needs sending) and its outcome."""

    chunk: Chunk
    frame: bytes | None
    outcome: ChunkOutcome
    input_wait: float = 0.0  # seconds its connection waited for chunks to build it from (the stream sets it)
    # What the batch left out: the chunk's memory from where its data reached the limit on
    # (a span larger than the limit, sender/chunk_spans.py), for a later chunk.
    remainder: tuple[MemoryRange, ...] = ()


class BatchBuilder:
    """Turns chunks into frames; one per connection."""

    def __init__(self, plan: TransferPlan) -> None:
        self.plan = plan
        self._region_starts = plan.layout.region_starts()
        # Its level is moved by the connection's pace (sender/compression_pace.py).
        self.compressor = PayloadCompressor(plan.compression) if plan.compression else None
        # The last chunk scanned had no zero page: read the next with pread (module docstring).
        self.last_chunk_dense = False

    def build(self, chunk: Chunk) -> BuiltBatch:
        """Read and scan one chunk. Errors reading guest memory propagate (fatal)."""
        plan = self.plan
        started = time.monotonic()
        outcome = ChunkOutcome(chunk_bytes=chunk.length)
        chunk_ranges = ranges_to_array(chunk.ranges)
        # Framed as all data; the pages are read into it where they will be sent.
        in_place = FrameInPlace(
            plan.session_token,
            chunk.chunk_id,
            merge_contiguous(chunk_ranges, self._region_starts),
            chunk.length,
            chunk.attempt,
            chunk.settled_below,
        )
        windows: list[ResidentWindow] = []  # guest memory mapped in place (common/resident_window.py)
        parts: list[_Scanned] = []
        try:
            if not plan.skip_zero_pages:
                parts = self._read_all(chunk, outcome, in_place.data)
                data_ranges, zero_ranges = chunk_ranges, EMPTY_RANGES
            elif len(chunk.ranges) > MAPPED_MAX_RANGES and all(
                r.gpa % plan.page_size == 0 and r.length % plan.page_size == 0 for r in chunk.ranges
            ):
                data_ranges, zero_ranges, parts = self._scan_gathered(chunk, outcome, in_place.data)
            else:
                scanned = None if self.last_chunk_dense else self._scan_mapped(chunk, outcome, windows)
                if scanned is None:  # dense memory, or some page not in memory (a hole, swapped out): pread
                    scanned = self._scan_each(chunk, outcome, in_place.data)
                data_ranges, zero_ranges, parts = scanned
                self.last_chunk_dense = outcome.zero_pages == 0
            remainder = EMPTY_RANGES
            if chunk.length - outcome.zero_bytes > plan.chunk_bytes:  # a span beyond the limit, filled
                cut = _cut_point(data_ranges, plan.chunk_bytes, plan.page_size)
                data_ranges, zero_ranges = _below(data_ranges, cut), _below(zero_ranges, cut)
                parts = _first_runs(parts, data_ranges[:, 1])
                remainder = _from(chunk_ranges, cut)
                _recount(outcome, _below(chunk_ranges, cut), data_ranges, zero_ranges, plan.page_size)
            outcome.transmitted_bytes = outcome.chunk_bytes - outcome.zero_bytes
            if chunk.zero_records:
                outcome.zeroed_bytes = outcome.zero_bytes
            else:
                zero_ranges = EMPTY_RANGES
            # Read once: the connection's pace may move the rung meanwhile (another thread).
            level = self.compressor.level if self.compressor is not None else None
            packed = self._compress(parts, outcome.transmitted_bytes, level)
            if packed is not None:
                frame = encode_batch(
                    plan.session_token,
                    chunk.chunk_id,
                    data_ranges,
                    [packed],
                    zero_ranges,
                    chunk.attempt,
                    chunk.settled_below,
                    plan.compression,
                    outcome.transmitted_bytes,
                )
                outcome.compressed_raw_bytes = outcome.transmitted_bytes
                outcome.compressed_bytes = len(packed)
                outcome.compression_level = level
            elif outcome.zero_pages == 0 and chunk.length and not len(remainder):
                if windows:  # scanned in place: the frame is filled from the mapping, one copy
                    _gather_into(parts, in_place.data, plan.page_size)
                parts.clear()  # views into the frame: none may outlive finish()
                frame: bytes | None = in_place.finish()  # every page read and non-zero: complete
            elif len(data_ranges) or len(zero_ranges) or chunk.attempt:
                # A later attempt is sent even with nothing in it: an earlier one may have
                # been applied, and the receiver must count this one in its place.
                gathered = FrameInPlace(
                    plan.session_token,
                    chunk.chunk_id,
                    data_ranges,
                    outcome.transmitted_bytes,
                    chunk.attempt,
                    chunk.settled_below,
                    zero_ranges,
                )
                try:
                    _gather_into(parts, gathered.data, plan.page_size)
                    frame = gathered.finish()
                finally:
                    gathered.discard()  # no-op once finished
            else:
                frame = None
        finally:
            in_place.discard()  # unsent and dropped (no-op once finished)
            parts.clear()  # views into the windows go before the windows
            for window in windows:
                window.close()
        outcome.scan_seconds = time.monotonic() - started
        if frame is None:
            return BuiltBatch(chunk, None, outcome)
        outcome.wire_bytes = len(frame) + GRPC_MESSAGE_PREFIX
        outcome.batches = 1
        return BuiltBatch(chunk, frame, outcome, remainder=tuple(ranges_from_array(remainder)))

    def _compress(self, parts: list[_Scanned], raw_length: int, level: int | None) -> bytes | None:
        """The payload compressed at `level`, or None: compression off, nothing to send, or it
        did not pay."""
        if self.compressor is None or not raw_length:
            return None
        payload = _payload(parts)
        try:
            return self.compressor.compress(payload, raw_length, level)
        finally:
            payload.clear()  # views into the frame or the windows

    def _read_all(self, chunk: Chunk, outcome: ChunkOutcome, into: memoryview) -> list[_Scanned]:
        """No skipping: every byte goes out as it is (the chunk's ranges are the data ranges)."""
        parts, position = [], 0
        for memory_range in chunk.ranges:
            buffer = into[position : position + memory_range.length]
            position += memory_range.length
            self.plan.layout.read_into(memory_range.gpa, buffer)
            runs = np.array([(memory_range.gpa, memory_range.length)], dtype=np.uint64)
            parts.append(_Scanned(memory_range.gpa, buffer, runs))
            outcome.normal_pages += count_pages(memory_range.gpa, memory_range.length, self.plan.page_size)
        return parts

    def _scan_mapped(
        self, chunk: Chunk, outcome: ChunkOutcome, windows: list[ResidentWindow]
    ) -> tuple[np.ndarray, np.ndarray, list[_Scanned]] | None:
        """Range by range, scanned where the pages lie (a shared mapping, no copy); None,
        with nothing counted, unless every page of every range is in memory."""
        for memory_range in chunk.ranges:
            window = self.plan.layout.resident_window(memory_range.gpa, memory_range.length)
            if window is None:
                for opened in windows:
                    opened.close()
                windows.clear()  # read with pread instead, into the frame
                return None
            windows.append(window)
        page_size = self.plan.page_size
        return _collect(
            outcome,
            (
                (memory_range, window.view, scan_zero_pages(memory_range.gpa, window.view, page_size))
                for memory_range, window in zip(chunk.ranges, windows, strict=True)
            ),
        )

    def _scan_each(
        self, chunk: Chunk, outcome: ChunkOutcome, into: memoryview
    ) -> tuple[np.ndarray, np.ndarray, list[_Scanned]]:
        """Range by range, read into the frame, skipping file holes unread (large ranges: iteration 0)."""
        layout, page_size = self.plan.layout, self.plan.page_size

        def read_and_scan() -> Iterator[tuple[MemoryRange, memoryview, ZeroScan]]:
            position = 0
            for memory_range in chunk.ranges:
                buffer = into[position : position + memory_range.length]
                position += memory_range.length
                yield memory_range, buffer, scan_guest_range(layout, memory_range.gpa, buffer, page_size)

        return _collect(outcome, read_and_scan())

    def _scan_gathered(
        self, chunk: Chunk, outcome: ChunkOutcome, into: memoryview
    ) -> tuple[np.ndarray, np.ndarray, list[_Scanned]]:
        """Many page-aligned ranges (dirty pages): read back to back, scanned in one pass."""
        page_size = self.plan.page_size
        position = 0
        for memory_range in chunk.ranges:
            self.plan.layout.read_into(memory_range.gpa, into[position : position + memory_range.length])
            position += memory_range.length
        page_gpas = np.concatenate([np.arange(r.gpa, r.end, page_size, dtype=np.uint64) for r in chunk.ranges])
        scan, offsets = scan_pages(page_gpas, into[:position], page_size, self._region_starts)
        _count(outcome, scan, position)
        # The data runs by where they lie in `into` (a part at offset 0 of it).
        runs = np.stack([offsets.astype(np.uint64), scan.data[:, 1]], axis=1).reshape(-1, 2)
        return scan.data, scan.zero, [_Scanned(0, into[:position], runs)]


@dataclass(frozen=True, slots=True)
class _Scanned:
    """One range as scanned: where its bytes lie (`view`, the range from `gpa` on) and
    its data runs (k x 2 uint64: gpa, length), the bytes that go out."""

    gpa: int
    view: memoryview
    data: np.ndarray


def _collect(
    outcome: ChunkOutcome, scanned: Iterable[tuple[MemoryRange, memoryview, ZeroScan]]
) -> tuple[np.ndarray, np.ndarray, list[_Scanned]]:
    """Data and zero ranges of ranges scanned one by one (each with its bytes), counted, and
    each range's data runs with its bytes, in order."""
    data_parts, zero_parts, parts = [], [], []
    for memory_range, view, scan in scanned:
        _count(outcome, scan, memory_range.length)
        data_parts.append(scan.data)
        zero_parts.append(scan.zero)
        parts.append(_Scanned(memory_range.gpa, view, scan.data))
    return np.concatenate(data_parts), np.concatenate(zero_parts), parts


def _payload(parts: list[_Scanned]) -> list[memoryview]:
    """A view of every data run, in order."""
    return [part.view[gpa - part.gpa : gpa - part.gpa + length] for part in parts for gpa, length in part.data.tolist()]


def _gather_into(parts: list[_Scanned], into: memoryview, page_size: int) -> None:
    """Every data run, back to back, into `into`. Where a range's runs are whole pages
    (always, but for ranges off page boundaries) its data pages go in one numpy `take`:
    memory half written at random has about 500 runs per 8 MiB chunk, and a copy call
    per run cost twice as much (0.67 against 0.38-0.48 ms a chunk)."""
    target = np.frombuffer(into, dtype=np.uint8)
    position = 0
    for part in parts:
        runs = part.data
        if not len(runs):
            continue
        offsets = runs[:, 0] - np.uint64(part.gpa)
        lengths = runs[:, 1]
        size = int(lengths.sum())
        source = np.frombuffer(part.view, dtype=np.uint8)
        out = target[position : position + size]
        if len(runs) > 1 and len(source) % page_size == 0 and not ((offsets | lengths) % page_size).any():
            pages = _page_numbers(offsets // page_size, lengths // page_size)
            rows = source.reshape(-1, page_size)
            if pages[0] < 0 or pages[-1] >= len(rows):  # sorted runs: "clip" must never clip
                raise AssertionError(f"data runs reach past their range at {part.gpa:#x}")
            np.take(rows, pages, axis=0, out=out.reshape(-1, page_size), mode="clip")  # "clip": no buffering
        else:
            at = 0
            for offset, length in zip(offsets.tolist(), lengths.tolist(), strict=True):
                np.copyto(out[at : at + length], source[offset : offset + length])
                at += length
        position += size
    if position != len(target):
        raise AssertionError(f"data runs hold {position} bytes, the frame {len(target)}")


def _page_numbers(first: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The page numbers of runs of pages (first page, count), in order."""
    counts = counts.astype(np.int64)
    starts = np.cumsum(counts) - counts  # where each run begins in the result
    return np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(first.astype(np.int64) - starts, counts)


def _cut_point(data_ranges: np.ndarray, limit: int, page_size: int) -> int:
    """The page boundary below which the data runs hold at most `limit` bytes, as close to
    it as pages allow (runs in gpa order, more than `limit` bytes in all)."""
    lengths = data_ranges[:, 1].astype(np.int64)
    over = int(np.searchsorted(np.cumsum(lengths), limit, side="right"))  # first run that crosses it
    before = int(lengths[:over].sum())
    return align_down(int(data_ranges[over, 0]) + limit - before, page_size)


def _below(ranges: np.ndarray, cut: int) -> np.ndarray:
    """The parts of (gpa, length) rows below `cut`."""
    kept = ranges[ranges[:, 0] < np.uint64(cut)].copy()
    ends = kept[:, 0] + kept[:, 1]
    kept[:, 1] = np.minimum(ends, np.uint64(cut)) - kept[:, 0]
    return kept


def _first_runs(parts: list[_Scanned], lengths: np.ndarray) -> list[_Scanned]:
    """The parts' data runs cut like the data ranges they stand for: run i of all parts in
    order is data range i (by gpa; a gathered part gives its runs by offset in its
    buffer), so the first len(lengths) runs are kept, with these lengths."""
    kept, position = [], 0
    for part in parts:
        count = min(len(part.data), len(lengths) - position)
        runs = part.data[:count].copy()
        runs[:, 1] = lengths[position : position + count]
        kept.append(_Scanned(part.gpa, part.view, runs))
        position += count
    return kept


def _from(ranges: np.ndarray, cut: int) -> np.ndarray:
    """The parts of (gpa, length) rows from `cut` on."""
    ends = ranges[:, 0] + ranges[:, 1]
    kept = ranges[ends > np.uint64(cut)].copy()
    starts = np.maximum(kept[:, 0], np.uint64(cut))
    kept[:, 1] = kept[:, 0] + kept[:, 1] - starts
    kept[:, 0] = starts
    return kept


def _recount(
    outcome: ChunkOutcome, chunk_ranges: np.ndarray, data_ranges: np.ndarray, zero_ranges: np.ndarray, page_size: int
) -> None:
    """Counters of the part of a chunk its batch carries (cut on a page boundary: no page
    is split between the batch and the remainder)."""
    covered = int(chunk_ranges[:, 1].sum())
    outcome.chunk_bytes = covered
    outcome.scanned_bytes = covered if outcome.scanned_bytes else 0  # nothing is scanned without skipping
    outcome.zero_bytes = int(zero_ranges[:, 1].sum())
    outcome.zero_pages = count_pages_in(zero_ranges, page_size)
    outcome.normal_pages = count_pages_in(data_ranges, page_size)


def _count(outcome: ChunkOutcome, scan: ZeroScan, scanned_bytes: int) -> None:
    outcome.scanned_bytes += scanned_bytes
    outcome.zero_bytes += scan.zero_bytes
    outcome.zero_pages += scan.zero_pages
    outcome.normal_pages += scan.normal_pages
