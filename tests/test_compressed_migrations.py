"""Compressed migrations between real services, and hostile compressed batches refused by a receiver."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common import compression as codec
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.common.wire import encode_batch
from tests.helpers import assert_destination_equals_source, migrate, receiver_stub, run_cli
from tests.test_bad_input import LAYOUT, allocated, destination_is_zero, prepare, send_raw
from tests.test_compression import text_pages, words_image, zstd_frame_declaring
from tests.test_metrics import scrape

pytestmark = pytest.mark.e2e
MIB = 1 << 20
METHODS = [pb.COMPRESSION_ZSTD, pb.COMPRESSION_LZ4]


def compressible_image(path: Path, size: int) -> None:
    """Text pages with every fourth page zero (skipped, or compressed with skipping off)."""
    text = bytearray(text_pages(size // 4096))
    for page in range(0, size // 4096, 4):
        text[page * 4096 : (page + 1) * 4096] = bytes(4096)
    path.write_bytes(text)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("image_kind", "skip"), [("text", True), ("text", False), ("random", True)])
def test_compressed_migration_is_byte_exact(sender, receiver, shm_dir, method, image_kind, skip):
    image = shm_dir / "guest.img"
    if image_kind == "text":
        compressible_image(image, 24 * MIB)
    else:
        make_image(image, 24 * MIB, 1.0, seed=3)
    regions = [(0, image)]
    status = migrate(
        sender.address,
        receiver.address,
        regions,
        connections=2,
        skip_zero_pages=skip,
        verify=True,
        compression=method,
    )
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified and status.compression == method
    assert_destination_equals_source(status, regions)
    stats = status.stats
    # Skipped bytes are never transmitted; transmitted is the raw payload, whatever the wire took.
    assert stats.transmitted_bytes + stats.zero_bytes == stats.total_bytes == 24 * MIB
    if image_kind == "text":
        assert stats.compressed_raw_bytes == stats.transmitted_bytes  # every batch shrank
        assert stats.compressed_raw_bytes / stats.compressed_bytes > 1.5
        assert stats.wire_bytes < stats.transmitted_bytes / 1.5
        levels = codec.ZSTD_LEVELS if method == pb.COMPRESSION_ZSTD else codec.LZ4_LEVELS
        assert stats.lowest_compression_level in levels and stats.highest_compression_level in levels
        assert stats.lowest_compression_level <= stats.highest_compression_level
    else:
        assert stats.compressed_raw_bytes == stats.compressed_bytes == 0  # every batch went raw
        assert stats.wire_bytes >= stats.transmitted_bytes


def test_send_migration_compress_shows_the_ratio(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    compressible_image(image, 8 * MIB)
    result = run_cli(
        "send-migration",
        "--sender",
        sender.address,
        "--destination",
        receiver.address,
        "--memory",
        f"{image}@0",
        "--compress",
        "zstd",
        "--verify",
        "--insecure",
    )
    assert result.returncode == 0, result.stderr
    assert "compressed" in result.stdout and "zstd:" in result.stdout and "ratio" in result.stdout
    assert "level" in result.stdout  # the level (or range of levels) the batches were made at


@pytest.fixture
def session(receiver):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        prepared = prepare(stub)
        yield prepared
        with contextlib.suppress(grpc.RpcError):
            stub.AbortMigration(pb.AbortMigrationRequest(session_token=prepared.session_token))


def compressed_frame(token: str, ranges, payload: bytes, method=pb.COMPRESSION_ZSTD, raw_length=None) -> bytes:
    return encode_batch(
        token, 1, ranges, [payload], compression=method, raw_length=len(payload) if raw_length is None else raw_length
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_compressed_batch_is_written_raw(receiver, session, method):
    text = text_pages(8)
    packed = codec.compress(method, [text], len(text))
    ranges = [MemoryRange(4096, 4 * 4096), MemoryRange(1 << 30, 4 * 4096)]
    frame = compressed_frame(session.session_token, ranges, packed, method, len(text))
    acks = send_raw(receiver.data_address, [frame])
    assert [(a.batch_id, a.bytes_written) for a in acks] == [(1, len(text))]
    first = Path(session.destination_regions[0].path).read_bytes()
    second = Path(session.destination_regions[1].path).read_bytes()
    assert first[4096 : 5 * 4096] == text[: 4 * 4096] and second[: 4 * 4096] == text[4 * 4096 :]


@functools.cache
def bombs() -> tuple[bytes, bytes]:
    """1 GiB of zeros, zstd (~40 KiB) and lz4 (~4 MiB)."""
    gib = bytes(1 << 30)
    return tuple(codec.compress(method, [gib], len(gib), threshold=1e9) for method in METHODS)


def hostile_batches(token: str) -> dict[str, bytes]:
    text = text_pages(4)
    zstd = codec.compress(pb.COMPRESSION_ZSTD, [text], len(text))
    lz4 = codec.compress(pb.COMPRESSION_LZ4, [text], len(text))
    ranges = [MemoryRange(0, len(text))]
    bomb, lz4_bomb = bombs() if token else (b"", b"")
    return {
        "unknown method": compressed_frame(token, ranges, zstd, method=7, raw_length=len(text)),
        "raw_length above the ranges": compressed_frame(token, ranges, zstd, raw_length=len(text) + 4096),
        "raw_length below the ranges": compressed_frame(token, ranges, zstd, raw_length=len(text) - 4096),
        "a raw batch declaring another raw_length": encode_batch(token, 1, ranges, [text], raw_length=len(text) + 1),
        "bomb declared small": compressed_frame(token, ranges, bomb, raw_length=len(text)),
        "lz4 bomb declared small": compressed_frame(token, ranges, lz4_bomb, pb.COMPRESSION_LZ4, len(text)),
        # The ranges say 1 GiB too (beyond the layout): the size is refused before anything else.
        "bomb whose frame lies about its size": compressed_frame(
            token, ranges, zstd_frame_declaring(bytes(64 * MIB), len(text)), raw_length=len(text)
        ),
        "bomb declared huge": compressed_frame(token, [MemoryRange(0, 1 << 30)], bomb, raw_length=1 << 30),
        "raw_length beyond the batch limit": compressed_frame(
            token, [MemoryRange(0, MIB)], zstd, raw_length=DEFAULT_MAX_BATCH_BYTES + 4096
        ),
        "truncated": compressed_frame(token, ranges, zstd[:-6], raw_length=len(text)),
        "trailing bytes": compressed_frame(token, ranges, zstd + b"\0\0", raw_length=len(text)),
        "corrupt": compressed_frame(token, ranges, zstd[:20] + bytes(8) + zstd[28:], raw_length=len(text)),
        "lz4 data called zstd": compressed_frame(token, ranges, lz4, raw_length=len(text)),
    }


# What each refusal says: the receiver's compression checks, never a plain length mismatch.
EXPECTED = {
    "unknown method": "unknown compression method 7",
    "raw_length above the ranges": "but raw_length declares",
    "raw_length below the ranges": "but raw_length declares",
    "a raw batch declaring another raw_length": "raw batch of 16384 bytes declares raw_length",
    "bomb declared small": "zstd frame declares 1073741824 bytes",
    "lz4 bomb declared small": "lz4 frame declares 1073741824 bytes",
    "bomb whose frame lies about its size": "zstd payload is corrupt",
    "bomb declared huge": "above the limit",
    "raw_length beyond the batch limit": "above the limit",
    "truncated": "truncated",
    "trailing bytes": "after its frame",
    "corrupt": "corrupt",
    "lz4 data called zstd": "no valid frame header",
}
HOSTILE = list(hostile_batches(""))


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_compressed_batch_is_refused_and_writes_nothing(receiver, session, name):
    frame = hostile_batches(session.session_token)[name]
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [frame])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert EXPECTED[name] in raised.value.details()
    assert allocated(session) == 0 and destination_is_zero(session)
    assert sum(r.length for r in LAYOUT) == 2 * MIB  # the layout these ranges were made for


@pytest.fixture(scope="module")
def metered(module_dir: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess]]:
    with (
        ServiceProcess("receiver", ["--memory-dir", str(module_dir / "metered"), "--metrics-port", "0"]) as rx,
        ServiceProcess("sender", ["--metrics-port", "0"]) as tx,
    ):
        yield tx, rx


def test_prometheus_counts_compressed_bytes_and_refusals(metered, shm_dir):
    sender, receiver = metered
    image = shm_dir / "guest.img"
    compressible_image(image, 8 * MIB)
    status = migrate(sender.address, receiver.address, [(0, image)], compression=pb.COMPRESSION_LZ4)
    assert status.state == pb.COMPLETED, status.error
    stats = status.stats
    _, tx = scrape(sender)
    assert tx[("livemig_sender_compressed_raw_bytes_total", ())] == stats.compressed_raw_bytes == 8 * MIB
    assert tx[("livemig_sender_compressed_bytes_total", ())] == stats.compressed_bytes < 4 * MIB
    assert tx[("livemig_sender_transmitted_bytes_total", ())] == stats.transmitted_bytes == 8 * MIB
    assert tx[("livemig_sender_wire_bytes_total", ())] == stats.wire_bytes < 4 * MIB
    channel, stub = receiver_stub(receiver.address)
    with channel:
        prepared = prepare(stub)
        with pytest.raises(grpc.RpcError):
            send_raw(receiver.data_address, [hostile_batches(prepared.session_token)["unknown method"]])
    _, rx = scrape(receiver)
    assert rx[("livemig_receiver_rejected_batches_total", (("reason", "compression"),))] == 1
    assert rx[("livemig_receiver_written_bytes_total", ())] == 8 * MIB  # raw bytes, as the sender counts


def test_a_capped_migration_raises_the_compression_level(sender, receiver, shm_dir):
    """The cap hands chunks out at its rate and counts wire bytes: connections that wait
    for chunks compress harder (sender/compression_pace.py). Random words compress about
    2.5x at hundreds of MiB/s a core; the cap, 4 MiB/s, is far below that on any load
    (about 3 s here, past the first chunks the cap lets out at once)."""
    image = shm_dir / "guest.img"
    words_image(image, 32 * MIB)
    regions = [(0, image)]
    status = migrate(
        sender.address,
        receiver.address,
        regions,
        connections=2,
        skip_zero_pages=True,
        compression=pb.COMPRESSION_ZSTD,
        max_batch_bytes=MIB,
        max_bandwidth_bytes_per_second=4 * MIB,
        verify=True,
    )
    assert status.state == pb.COMPLETED, status.error
    assert_destination_equals_source(status, regions)
    stats = status.stats
    assert stats.lowest_compression_level == codec.ZSTD_LEVEL
    assert stats.highest_compression_level > codec.ZSTD_LEVEL
