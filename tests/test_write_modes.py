"""How the receiver writes destination memory: pwrite or a shared mapping (receiver/write_mode.py, receiver/writer.py).

The unit tests and fuzz tests of sessions run against both modes (their fixtures are
parametrised), and so do the multi-process tests with two data workers. Here: which mode
a receiver picks, and hugetlbfs, which takes no write(2) at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.receiver import write_mode, writer
from livemig.receiver.registry import free_bytes
from livemig.receiver.write_mode import (
    WriteMode,
    file_write_mode,
    mapped_writes_supported,
    session_write_mode,
    usable_write_mode,
)
from tests.helpers import assert_destination_equals_source, migrate

MIB = 1 << 20


def test_auto_picks_mapped_writes_from_three_concurrent_writers() -> None:
    """Writers at once: the session's connections, spread over the data workers."""
    assert session_write_mode(WriteMode.PWRITE, 16, 8) == WriteMode.PWRITE
    assert session_write_mode(WriteMode.MAPPED, 16, 1) == WriteMode.MAPPED
    assert session_write_mode(WriteMode.AUTO, 16, 1) == WriteMode.PWRITE
    assert session_write_mode(WriteMode.AUTO, 16, 2) == WriteMode.PWRITE
    assert session_write_mode(WriteMode.AUTO, 16, 3) == WriteMode.MAPPED
    assert session_write_mode(WriteMode.AUTO, 16, 8) == WriteMode.MAPPED
    assert session_write_mode(WriteMode.AUTO, 2, 8) == WriteMode.PWRITE  # two workers: two writers at most
    assert session_write_mode(WriteMode.AUTO, 16, 0) == WriteMode.MAPPED  # not said: every worker
    assert session_write_mode(WriteMode.AUTO, 2, 0) == WriteMode.PWRITE


def test_auto_is_pwrite_where_the_kernel_cannot_populate_mappings(monkeypatch) -> None:
    assert usable_write_mode(WriteMode.PWRITE) == WriteMode.PWRITE
    monkeypatch.setattr(write_mode, "mapped_writes_supported", lambda: False)
    assert usable_write_mode(WriteMode.AUTO) == WriteMode.PWRITE
    with pytest.raises(RuntimeError, match=r"5\.14"):
        usable_write_mode(WriteMode.MAPPED)


@pytest.mark.e2e
@pytest.mark.parametrize(("connections", "expected"), [(2, "pwrite"), (4, "mapped")])
def test_receiver_writes_a_many_stream_session_through_mappings(sender, shm_dir, connections, expected) -> None:
    if expected == WriteMode.MAPPED and not mapped_writes_supported():
        pytest.skip("this kernel has no MADV_POPULATE_WRITE")
    image = shm_dir / "guest.img"
    make_image(image, 16 * MIB, 0.5, seed=12)
    with ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "4"]) as rx:
        status = migrate(sender.address, rx.address, [(0, image)], connections=connections, verify=True)
        assert status.state == pb.COMPLETED, status.error
        assert_destination_equals_source(status, [(0, image)])
        assert f"{expected} writes" in "".join(rx.lines)


def test_a_file_that_takes_pwrite_keeps_the_preferred_mode(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "region", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert file_write_mode(WriteMode.PWRITE, fd) == WriteMode.PWRITE
        assert file_write_mode(WriteMode.MAPPED, fd) == WriteMode.MAPPED
    finally:
        os.close(fd)


@pytest.mark.e2e
def test_hugetlbfs_destination_is_written_through_a_mapping(sender, shm_dir: Path, hugetlbfs: Path) -> None:
    """hugetlbfs refuses write(2); the receiver finds out at prepare and maps the files instead.
    Runs with the default write mode, which on a 2-core host would otherwise be pwrite."""
    # No size= limit: the space is the pool's free pages (statvfs alone says 0 bytes).
    assert free_bytes(hugetlbfs) >= 32 * 2 * MIB
    image = shm_dir / "guest.img"
    make_image(image, 16 * MIB, 0.5, seed=11)
    with ServiceProcess("receiver", ["--memory-dir", str(hugetlbfs / "dst"), "--data-workers", "2"]) as rx:
        status = migrate(sender.address, rx.address, [(0, image)], connections=2, verify=True)
        assert status.state == pb.COMPLETED, status.error
        assert status.stats.verified
        assert_destination_equals_source(status, [(0, image)])


def test_short_writes_are_continued_until_every_byte_is_written(tmp_path: Path, monkeypatch) -> None:
    """pwrite may write less than asked (a signal, a filesystem's limit per call): the
    rest goes on from where it stopped, at the right file offset."""
    real_pwrite = os.pwrite
    calls: list[tuple[int, int]] = []

    def at_most_3000_bytes(fd: int, data, offset: int) -> int:
        calls.append((len(data), offset))
        return real_pwrite(fd, memoryview(data)[:3000], offset)

    monkeypatch.setattr(writer.os, "pwrite", at_most_3000_bytes)
    payload = os.urandom(8192)
    path = tmp_path / "destination"
    path.write_bytes(bytes(16384))
    fd = os.open(path, os.O_RDWR)
    try:
        writer._write_all(fd, memoryview(payload), 4096)
    finally:
        os.close(fd)
    assert calls == [(8192, 4096), (5192, 7096), (2192, 10096)]
    assert path.read_bytes() == bytes(4096) + payload + bytes(4096)


def test_a_scattered_batch_over_regions_is_written_exact_through_short_writes(shm_dir: Path, monkeypatch) -> None:
    """The pwrite loop of a batch: ranges of several regions in one batch (each region's
    run of ranges in its own turn), each write short, every byte still in its place."""
    from livemig.common.ranges import MemoryRange
    from livemig.common.wire import decode_batch, encode_batch
    from livemig.receiver.session import Session

    page = 4096
    layout = [MemoryRange(0, 64 * page), MemoryRange(1 << 32, 64 * page), MemoryRange(2 << 32, 64 * page)]
    session = Session.create("s", "token", "m", shm_dir / "s", layout, page, 4 << 20, write_mode="pwrite")
    session_writer = writer.SessionWriter(session.record)
    real_pwrite = os.pwrite
    monkeypatch.setattr(writer.os, "pwrite", lambda fd, data, offset: real_pwrite(fd, memoryview(data)[:1000], offset))
    pages = (1, 5, 9)  # unaligned lengths: ranges need not be whole pages
    ranges = [MemoryRange(region.gpa + p * page, page + 7) for region in layout for p in pages]
    payloads = [os.urandom(r.length) for r in ranges]
    session_writer.apply(decode_batch(encode_batch("token", 1, ranges, payloads)))
    try:
        for index, region in enumerate(layout):
            written = Path(session.record.regions[index].path).read_bytes()
            expected = bytearray(region.length)
            for memory_range, payload in zip(ranges, payloads, strict=True):
                if region.gpa <= memory_range.gpa < region.gpa + region.length:
                    at = memory_range.gpa - region.gpa
                    expected[at : at + len(payload)] = payload
            assert written == bytes(expected)
    finally:
        session_writer.end("aborted")
        session_writer.release()


@pytest.mark.parametrize(
    ("regions", "segments"),
    [([], []), ([3, 3, 3], [(3, 0, 3)]), ([0, 0, 1, 2, 2, 0], [(0, 0, 2), (1, 2, 3), (2, 3, 5), (0, 5, 6)])],
)
def test_region_segments_keep_the_order_of_the_ranges(regions, segments) -> None:
    assert writer._region_segments(regions) == segments
