"""How much guest memory the next chunk covers: more where memory has been sparse.

A chunk's batch carries at most the receiver's batch limit of page data
(TransferPlan.chunk_bytes). Where every page holds data a chunk covers exactly
that much memory; where half the pages are zero a chunk of the same span sends a
half-full batch, and every batch costs the same fixed work at both ends (gRPC's
and ours): 0.6 (50 % written) to 1.5 CPU ms (10 %) per batch over both ends.

So the pool (sender/transfer.py) sizes each chunk by the share of data pages in
the chunks reported before it: the span at which the expected payload is FILL of
the limit, between the limit itself and max_factor times it (the sender's
--chunk-span-factor, sender/defaults.py). 2 GiB written at random, 2 connections,
factor 4 against 1 (benchmarks/chunk_spans.py, docs/benchmarks.md, stop 20): 10 %
written 0.81x the time, 20 % 0.88x, 50 % 0.97x. A chunk whose
data turns out larger than the limit (memory denser than what came before) is
cut by its builder at a page boundary where the limit is reached; the rest comes
back with its report and goes out in a later chunk (sender/batch_builder.py).
The estimate starts at every page holding data: the first chunks are as they
always were. The span also bounds a batch's range table, at most one range per
page of the span (16 bytes each): spans stay within half the message's header
allowance (common/wire.HEADER_ALLOWANCE), 128 MiB of 4 KiB pages.
"""

from __future__ import annotations

from livemig.common.ranges import align_down
from livemig.common.wire import HEADER_ALLOWANCE, PACKED_RANGE_BYTES
from livemig.sender.chunks import ChunkOutcome
from livemig.sender.defaults import DEFAULT_CHUNK_SPAN_FACTOR

FILL = 0.9  # expected payload per chunk, of the limit: uniform memory rarely overflows
WEIGHT = 0.25  # of the newest report in the running estimate: follows a change within ~8 chunks
# Pages below this many per limit (huge pages, tiny limits): no span beyond the limit.
MIN_PAGES_PER_LIMIT = 16
MAX_SPAN_PAGES = HEADER_ALLOWANCE // 2 // PACKED_RANGE_BYTES  # a range per page still fits the header


class ChunkSpans:
    """The running share of data pages in reported chunks, and the span it gives the next.

    One per migration, in the migration process: the transfer pool's report reader
    observes, its sending thread asks (a float assignment each: no lock needed).
    """

    __slots__ = ("_density", "max_factor", "page_size", "payload_bytes")

    def __init__(self, payload_bytes: int, page_size: int, max_factor: int = DEFAULT_CHUNK_SPAN_FACTOR) -> None:
        self.payload_bytes = payload_bytes
        self.page_size = page_size
        self.max_factor = max_factor  # the sender's --chunk-span-factor; 1: every chunk spans the limit
        self._density = 1.0  # bytes to send per byte of memory scanned, newest weighted most

    @property
    def density(self) -> float:
        return self._density

    def observe(self, outcome: ChunkOutcome) -> None:
        """A chunk's outcome: its payload (raw, before compression) against its span."""
        if outcome.chunk_bytes <= 0:
            return
        share = min(1.0, outcome.transmitted_bytes / outcome.chunk_bytes)
        self._density += WEIGHT * (share - self._density)

    def next_span(self) -> int:
        """Bytes of guest memory for the next chunk: a page multiple, at least the limit."""
        limit = self.payload_bytes
        if self.max_factor <= 1 or limit < MIN_PAGES_PER_LIMIT * self.page_size:
            return limit
        wanted = FILL * limit / max(self._density, FILL / self.max_factor)
        most = min(self.max_factor * limit, MAX_SPAN_PAGES * self.page_size)
        return max(limit, align_down(min(int(wanted), most), self.page_size))
