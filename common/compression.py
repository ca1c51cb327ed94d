"""Page payload codecs: adaptive compression on the sender, bounded decompression on the receiver.

A batch's payload is compressed with the migration's method (zstd or lz4, as
standard frames any client can make) only when that pays: a batch that does not
shrink below WORTH_IT of its raw size goes out raw, so incompressible memory (a
guest's random or encrypted pages) costs the attempt and no more. A probe of a
few slices is compressed first and a batch whose probe does not shrink is not
compressed at all: full zstd on random pages still cost a core ~1 s per GiB.

The receiver never trusts a declared size. Every frame must declare its content
size, equal to the batch's raw_length (the ranges' total, checked by the caller,
itself within the batch limit) and carry a content checksum (a corrupt payload
that still decodes is caught), and the decoders are told that bound: zstd sizes
its window and output by the declared content size and fails a frame that decodes
to more; lz4 returns at most raw_length bytes per call. So a decompression bomb
costs one batch's memory at most, and a payload that decodes to more or fewer
bytes, carries bytes after its frame, or is truncated or corrupt, is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import lz4.frame
import zstandard

from livemig.common.proto import livemig_pb2 as pb

Buffer = bytes | bytearray | memoryview

NAMES = {pb.COMPRESSION_NONE: "none", pb.COMPRESSION_ZSTD: "zstd", pb.COMPRESSION_LZ4: "lz4"}
KNOWN = frozenset(NAMES)
# Measured in benchmarks/compression_levels.py (docs/benchmarks.md): zstd level 1 shrinks
# guest memory almost as level 3 does at about twice the speed; lz4's fast mode (0)
# is the cheapest of all at a lower ratio.
ZSTD_LEVEL = 1
LZ4_LEVEL = 0
# The levels a connection climbs while its link, not its CPU, holds it back
# (sender/compression_pace.py), cheapest first: on a 1 Gbit/s link the CPU of a
# core compresses text faster than the link carries it even at the top rung.
ZSTD_LEVELS = (ZSTD_LEVEL, 2, 3, 5, 7, 9)
LZ4_LEVELS = (LZ4_LEVEL, 3, 6, 9)
# A batch goes out compressed only below this share of its raw size: a 10 % saving
# pays for the receiver's decompression, less does not.
WORTH_IT = 0.9
PROBE_SLICES = 4
PROBE_SLICE_BYTES = 16 << 10
PROBE_MIN_BYTES = 256 << 10  # smaller batches are compressed outright


class CompressionError(ValueError):
    """A compressed payload that is refused: unknown method, wrong size, bomb, corrupt."""


def name(method: int) -> str:
    return NAMES.get(method, f"unknown ({method})")


class PayloadCompressor:
    """One connection's compressor (one thread uses it): compresses a batch's payload
    parts when that pays, else says to send them raw."""

    def __init__(self, method: int, level: int | None = None, threshold: float = WORTH_IT, probe: bool = True) -> None:
        if method not in KNOWN or method == pb.COMPRESSION_NONE:
            raise ValueError(f"no compressor for method {name(method)}")
        self.method = method
        self.threshold = threshold
        self.probe = probe
        # The rungs this compressor may use (one, when a level is given) and the one in use:
        # another thread (the connection's pace) moves `rung`; a batch uses the level it finds.
        if level is not None:
            self.levels: tuple[int, ...] = (level,)
        else:
            self.levels = ZSTD_LEVELS if method == pb.COMPRESSION_ZSTD else LZ4_LEVELS
        self.rung = 0
        self._zstd_by_level: dict[int, zstandard.ZstdCompressor] = {}

    @property
    def level(self) -> int:
        return self.levels[self.rung]

    def _zstd(self, level: int) -> zstandard.ZstdCompressor:
        compressor = self._zstd_by_level.get(level)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
            self._zstd_by_level[level] = compressor
        return compressor

    def compress(self, parts: Sequence[Buffer], raw_length: int, level: int | None = None) -> bytes | None:
        """The compressed frame of the concatenated parts at `level` (None: the current
        rung's), or None: send them raw."""
        if not raw_length:
            return None
        if self.probe and raw_length >= PROBE_MIN_BYTES and not self._probe_shrinks(parts, raw_length):
            return None
        packed = self._compress(parts, raw_length, level)
        return packed if len(packed) <= self.threshold * raw_length else None

    def _probe_shrinks(self, parts: Sequence[Buffer], raw_length: int) -> bool:
        """Compress a few slices spread over the payload: does the batch look compressible?
        Always at the cheapest level: a higher one would not change the answer for random
        pages, only its price (zstd 9 costs random slices ~10x what zstd 1 does)."""
        flat = _flat(parts)
        step = raw_length // PROBE_SLICES
        sample = [flat(i * step, PROBE_SLICE_BYTES) for i in range(PROBE_SLICES)]
        sampled = sum(len(s) for s in sample)
        return len(self._compress(sample, sampled, self.levels[0])) <= self.threshold * sampled

    def _compress(self, parts: Sequence[Buffer], raw_length: int, level: int | None = None) -> bytes:
        level = self.level if level is None else level
        if self.method == pb.COMPRESSION_ZSTD:
            zstd = self._zstd(level)
            if len(parts) == 1:
                return zstd.compress(parts[0])  # declares its content size
            stream = zstd.compressobj(size=raw_length)
            return b"".join([*(stream.compress(part) for part in parts), stream.flush()])
        stream = lz4.frame.LZ4FrameCompressor(compression_level=level, content_checksum=True)
        head = stream.begin(source_size=raw_length)  # declares its content size
        return b"".join([head, *(stream.compress(part) for part in parts), stream.flush()])


def _flat(parts: Sequence[Buffer]):
    """A reader of [offset, offset + length) of the parts as if concatenated (clipped)."""
    starts, position = [], 0
    for part in parts:
        starts.append(position)
        position += len(part)

    def read(offset: int, length: int) -> bytes:
        pieces, end = [], offset + length
        for start, part in zip(starts, parts, strict=True):
            stop = start + len(part)
            if stop > offset and start < end:
                pieces.append(bytes(memoryview(part)[max(offset - start, 0) : min(end, stop) - start]))
        return b"".join(pieces)

    return read


def compress(method: int, parts: Sequence[Buffer], raw_length: int, **options) -> bytes | None:
    """PayloadCompressor(method, **options).compress(parts, raw_length), for one batch."""
    return PayloadCompressor(method, **options).compress(parts, raw_length)


def decompress(method: int, data: Buffer, raw_length: int) -> bytes:
    """Exactly raw_length bytes from a compressed payload, never more allocated; raises
    CompressionError. raw_length must already be within the batch limit."""
    if method == pb.COMPRESSION_ZSTD:
        return _zstd_decompress(data, raw_length)
    if method == pb.COMPRESSION_LZ4:
        return _lz4_decompress(data, raw_length)
    raise CompressionError(f"unknown compression method {name(method)}")


def _zstd_decompress(data: Buffer, raw_length: int) -> bytes:
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise CompressionError(f"zstd payload has no valid frame header: {error}") from error
    if declared != raw_length:
        shown = "no size" if declared < 0 else f"{declared} bytes"
        raise CompressionError(f"zstd frame declares {shown}, the batch raw_length {raw_length}")
    if not zstandard.get_frame_parameters(data).has_checksum:
        raise CompressionError("zstd frame has no content checksum")
    stream = zstandard.ZstdDecompressor().decompressobj()
    try:
        # Output and window are sized by the declared content size; a frame that decodes
        # to more fails ("destination buffer is too small") without allocating it.
        raw = stream.decompress(data)
    except zstandard.ZstdError as error:
        raise CompressionError(f"zstd payload is corrupt: {error}") from error
    return _exact(raw, raw_length, bool(stream.eof), stream.unused_data, "zstd")


def _lz4_decompress(data: Buffer, raw_length: int) -> bytes:
    stream = lz4.frame.LZ4FrameDecompressor()
    try:
        info = lz4.frame.get_frame_info(data)
        declared = info.get("content_size", 0)
        if declared != raw_length:
            shown = "no size" if not declared else f"{declared} bytes"
            raise CompressionError(f"lz4 frame declares {shown}, the batch raw_length {raw_length}")
        if not info.get("content_checksum"):
            raise CompressionError("lz4 frame has no content checksum")
        raw = stream.decompress(data, max_length=raw_length)
    except RuntimeError as error:  # lz4's errors (bad header, corrupt block)
        raise CompressionError(f"lz4 payload is corrupt: {error}") from error
    return _exact(raw, raw_length, bool(stream.eof), stream.unused_data or b"", "lz4")


def _exact(raw: bytes, raw_length: int, ended: bool, after: bytes, method: str) -> bytes:
    if len(raw) != raw_length or not ended:
        more = "more than" if len(raw) == raw_length else f"{len(raw)} bytes, not"
        raise CompressionError(f"{method} payload decodes to {more} its raw_length {raw_length} (or is truncated)")
    if after:
        raise CompressionError(f"{method} payload has {len(after)} bytes after its frame")
    return raw
