"""One connection's compression level, chosen from what holds the connection back (zstd's --adapt).

A connection builds batches (read, scan, compress) one ahead of its stream, and its
stream sends them within a window of unacknowledged batches (sender/stream.py); gRPC
asks the stream for its next batch once the previous one is on its way. Which side
waits for the other says where the bottleneck is:

- a built batch that waits, ready, for the stream to take it or for window credit:
  the link (or the receiver) is slower than this connection's CPU, so spending more
  CPU on a smaller payload is free time turned into fewer bytes on the wire: one rung
  up the compressor's ladder (common/compression.py, ZSTD_LEVELS / LZ4_LEVELS);
- a stream that waits for its next batch: compression (or reading) is the
  bottleneck: one rung down, at once; unless the builder itself was waiting for
  chunks to build from: then what holds the connection back is upstream (a
  bandwidth cap hands chunks out at its rate, and counts wire bytes), and a smaller
  payload is again free: a vote up.

A rung up needs UP_AFTER batches in a row that waited for the window and not for the
builder, so a single hiccup does not climb; a rung down needs one starved batch, as
a starved link costs more than a larger payload. On loopback (the CPU the bottleneck)
the level stays at the bottom; over a slow link it climbs until the builder only
just keeps ahead. Incompressible batches are rejected by the probe at any level,
so the level costs them nothing.
"""

from __future__ import annotations

import logging

from livemig.common.compression import PayloadCompressor

log = logging.getLogger("livemig.sender")

WAITED_SECONDS = 0.002  # a wait shorter than this is a hand-off, not a wait
UP_AFTER = 2  # batches in a row that waited for the window, and not for the builder, before a rung up


class CompressionPace:
    """Moves one connection's compressor up and down its level ladder; thread-safe enough:
    the stream thread moves the rung, the builder thread reads it once per batch."""

    def __init__(self, compressor: PayloadCompressor, connection: int) -> None:
        self.compressor = compressor
        self.connection = connection
        self._link_bound = 0  # batches in a row that waited for the link or for chunks, not for the builder

    def batch_sent(self, build_wait: float, link_wait: float, input_wait: float = 0.0) -> None:
        """One batch went out: `build_wait` seconds the stream waited for it to be built,
        `link_wait` seconds it waited, built, for the stream to take it and for window
        credit, `input_wait` seconds the builder waited for its chunks."""
        compressor = self.compressor
        starved = input_wait >= WAITED_SECONDS  # the connection had CPU to spare: chunks came slowly
        if build_wait >= WAITED_SECONDS and not starved:
            self._link_bound = 0
            if compressor.rung > 0:
                self._move(-1, "the stream waited for the batch")
            return
        if link_wait < WAITED_SECONDS and not starved:
            self._link_bound = 0
            return
        self._link_bound += 1
        if self._link_bound >= UP_AFTER and compressor.rung + 1 < len(compressor.levels):
            self._link_bound = 0
            self._move(+1, "batches waited for the link" if not starved else "chunks came slower than they were built")

    def _move(self, step: int, why: str) -> None:
        before = self.compressor.level
        self.compressor.rung += step
        log.debug("connection %d: compression level %d -> %d (%s)", self.connection, before, self.compressor.level, why)
