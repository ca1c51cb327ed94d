"""Page payload codecs (common/compression.py) and the batch builder's use of them, in process."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common import compression as codec
from livemig.common.compression import CompressionError, PayloadCompressor
from livemig.common.guest_memory import open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch
from livemig.sender.batch_builder import BatchBuilder, TransferPlan
from livemig.sender.chunks import Chunk

METHODS = [pb.COMPRESSION_ZSTD, pb.COMPRESSION_LZ4]
MIB = 1 << 20


def text_pages(pages: int) -> bytes:
    """Compressible memory: text of a few words per page, as page cache holds."""
    words = [b"migration", b"guest", b"page", b"kernel", b"buffer", b"cache", b"dirty", b"zero"]
    return b"".join(
        b" ".join(words[(i * 7 + j) % len(words)] + str(i + j).encode() for j in range(700))[:4096].ljust(4096, b".")
        for i in range(pages)
    )


def always(method: int) -> PayloadCompressor:
    """A compressor that compresses whatever it gets: for round trips of any payload."""
    return PayloadCompressor(method, threshold=1e9, probe=False)


@pytest.mark.parametrize("method", METHODS)
@given(parts=st.lists(st.binary(max_size=3000), max_size=6))
def test_any_payload_round_trips(method, parts):
    raw_length = sum(len(part) for part in parts)
    packed = always(method).compress(parts, raw_length)
    if not raw_length:
        assert packed is None
        return
    assert codec.decompress(method, memoryview(packed), raw_length) == b"".join(parts)


@pytest.mark.parametrize("method", METHODS)
@given(data=st.binary(min_size=1, max_size=600_000), cut=st.integers(min_value=0))
def test_adaptive_compression_is_raw_or_round_trips(method, data, cut):
    cut %= len(data)
    packed = codec.compress(method, [data[:cut], data[cut:]], len(data))
    if packed is not None:
        assert len(packed) <= codec.WORTH_IT * len(data)
        assert codec.decompress(method, packed, len(data)) == data


@pytest.mark.parametrize("method", METHODS)
def test_incompressible_goes_raw_and_compressible_shrinks(method):
    assert codec.compress(method, [os.urandom(8 * MIB)], 8 * MIB) is None
    text = text_pages(256)
    packed = codec.compress(method, [text], len(text))
    assert packed is not None and len(text) / len(packed) > 1.5


def zstd_frame_declaring(content: bytes, declared: int) -> bytes:
    """A zstd frame of `content` whose header declares `declared` bytes instead (a liar)."""
    frame = bytearray(codec.compress(pb.COMPRESSION_ZSTD, [content], len(content), threshold=1e9))
    descriptor = frame[4]
    assert descriptor >> 6 == 2 and not descriptor & 0x23  # a 4-byte size, a window byte, no dictionary
    frame[6:10] = declared.to_bytes(4, "little")
    return bytes(frame)


@pytest.mark.parametrize("method", METHODS)
def test_a_bomb_is_refused_without_allocating_it(method):
    gib = bytes(1 << 30)
    bomb = codec.compress(method, [gib], len(gib), threshold=1e9)
    del gib
    assert len(bomb) < 8 * MIB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CompressionError, match="declares"):
        codec.decompress(method, bomb, 8 * MIB)
    if method == pb.COMPRESSION_ZSTD:
        # The header lies too: the decoder stops at the declared size.
        with pytest.raises(CompressionError):
            codec.decompress(method, zstd_frame_declaring(bytes(64 * MIB), 4096), 4096)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 << 10  # KiB: far below 1 GiB


@pytest.mark.parametrize("method", METHODS)
def test_wrong_size_truncated_trailing_or_corrupt_payloads_are_refused(method):
    text = text_pages(16)
    packed = codec.compress(method, [text], len(text))
    bad = {
        "shorter raw_length": (packed, len(text) - 1),
        "longer raw_length": (packed, len(text) + 1),
        "truncated": (packed[:-9], len(text)),
        "trailing bytes": (packed + b"\0", len(text)),
        "two frames": (packed + packed, len(text)),
        "garbage": (b"not a frame at all", len(text)),
        "empty": (b"", len(text)),
    }
    for name, (data, raw_length) in bad.items():
        with pytest.raises(CompressionError):
            codec.decompress(method, data, raw_length)
            pytest.fail(name)
    flipped = 0
    for position in range(len(packed)):
        corrupt = bytearray(packed)
        corrupt[position] ^= 0x10
        try:
            assert codec.decompress(method, bytes(corrupt), len(text)) == text  # a harmless bit, else refused
        except CompressionError:
            flipped += 1
    assert flipped > len(packed) * 0.9


def test_an_unknown_method_is_refused():
    with pytest.raises(CompressionError, match="unknown"):
        codec.decompress(7, b"abcd", 4)


@pytest.mark.parametrize("method", METHODS)
def test_the_builder_compresses_what_pays_and_frames_the_rest_raw(method, tmp_path: Path):
    text = text_pages(512)
    image = tmp_path / "guest.img"
    image.write_bytes(text + os.urandom(2 * MIB))
    layout = open_source_layout([(0, str(image))], 4096)
    try:
        builder = BatchBuilder(TransferPlan("token", layout, 4096, 2 * MIB, True, method))
        built = builder.build(Chunk(1, (MemoryRange(0, 2 * MIB),), False))
        batch = decode_batch(built.frame)
        assert batch.header.compression == method and batch.header.raw_length == 2 * MIB
        assert codec.decompress(method, batch.data, 2 * MIB) == text
        assert built.outcome.transmitted_bytes == 2 * MIB  # raw: never the compressed size
        assert built.outcome.compressed_raw_bytes == 2 * MIB
        assert built.outcome.compressed_bytes == len(batch.data) < MIB
        assert built.outcome.wire_bytes < MIB
        raw = builder.build(Chunk(2, (MemoryRange(2 * MIB, 2 * MIB),), False))
        batch = decode_batch(raw.frame)
        assert batch.header.compression == pb.COMPRESSION_NONE and batch.header.raw_length == 0
        assert raw.outcome.compressed_raw_bytes == raw.outcome.compressed_bytes == 0
        assert raw.outcome.wire_bytes > 2 * MIB
    finally:
        layout.close()


def words_image(path: Path, size: int) -> None:
    """Text of random words from a random vocabulary: about 3x at zstd level 1, a little more
    higher up (text pages that repeat compress 20x and leave the link idle)."""
    rng = np.random.default_rng(7)
    vocabulary = [
        bytes(rng.integers(97, 123, size=int(rng.integers(3, 11)), dtype=np.uint8)) + b" " for _ in range(4096)
    ]
    text = b"".join(vocabulary[i] for i in rng.integers(0, len(vocabulary), size=size // 5).tolist())
    path.write_bytes((text * 2)[:size])
