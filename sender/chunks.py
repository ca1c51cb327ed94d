"""The chunk vocabulary of a connection: what goes in (Chunk) and what comes out (ChunkOutcome, ChunkReport).

Both the connection processes (batch builder, stream) and the migration process
(transfer pool, statistics) speak it, so it lives here, apart from either: a
connection process imports these types without the statistics and metrics
modules, and the builder, stream and statistics do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from livemig.common.ranges import MemoryRange


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk to send: ranges of at most chunk_bytes in all, sent as one batch.

    chunk_id is the batch id: a chunk that is prepared again (its connection
    process died) goes out under the same id with the next attempt number. Its
    pages are read again and a running guest may have changed them (a page now
    zero, another not), so the receiver writes the later attempt over the earlier
    and counts only the latest, as the sender does (it counts acknowledged
    chunks). With zero_records, its zero pages go out as zero ranges: pages that
    may have held data the destination already has (later iterations).
    settled_below: every chunk id below it was acknowledged when this chunk was
    handed out (PageBatch.settled_below; the receiver forgets those ids).
    """

    chunk_id: int
    ranges: tuple[MemoryRange, ...]
    zero_records: bool
    attempt: int = 0
    settled_below: int = 0

    @property
    def length(self) -> int:
        return sum(r.length for r in self.ranges)


@dataclass(slots=True)
class ChunkOutcome:
    """What one connection process did with one chunk of guest memory."""

    chunk_bytes: int = 0  # bytes of guest memory prepared (read and, with skipping, scanned)
    scanned_bytes: int = 0
    zero_bytes: int = 0
    zero_pages: int = 0
    normal_pages: int = 0
    transmitted_bytes: int = 0
    wire_bytes: int = 0
    batches: int = 0
    zeroed_bytes: int = 0  # zero-range records sent
    compressed_raw_bytes: int = 0  # payload of a batch that went out compressed (its transmitted bytes)
    compressed_bytes: int = 0  # that payload compressed (wire_bytes counts the whole frame)
    compression_level: int | None = None  # the level it was compressed at (not summed: stats keep the range)
    scan_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ChunkReport:
    """What the owner of statistics learns about one chunk, once (and what of it is left to send)."""

    connection: int
    chunk_id: int
    outcome: ChunkOutcome
    sent_at: float | None  # time.monotonic() when its batch first went to a stream (None: no batch)
    acked_at: float | None
    resent_wire_bytes: int = 0
    resends: int = 0
    # The chunk's memory its batch did not carry (its data reached the batch limit first:
    # sender/chunk_spans.py); the pool sends it in a later chunk.
    remainder: tuple[MemoryRange, ...] = ()
