"""Guest memory scanned in place: only pages already in memory, never a hole, the same frames as pread."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.common.guest_memory import open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.resident_window import ResidentWindow
from livemig.sender.batch_builder import BatchBuilder, TransferPlan
from livemig.sender.chunks import Chunk

PAGE = 4096
PAGES = 32


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_written_file_is_read_in_place_at_any_offset(shm_dir):
    contents = os.urandom(PAGES * PAGE)
    (shm_dir / "guest").write_bytes(contents)
    fd = os.open(shm_dir / "guest", os.O_RDONLY)
    try:
        for offset, length in ((0, PAGES * PAGE), (3 * PAGE + 17, 5 * PAGE + 100), (PAGES * PAGE - 1, 1)):
            window = ResidentWindow.open(fd, offset, length)
            assert window is not None
            assert bytes(window.view) == contents[offset : offset + length]
            window.close()
    finally:
        os.close(fd)


def test_a_window_over_a_hole_is_refused_and_allocates_nothing(shm_dir):
    """Reading a hole through a shared tmpfs mapping would allocate it in the guest's file."""
    path = shm_dir / "guest"
    with path.open("wb") as file:
        file.truncate(PAGES * PAGE)
        file.write(b"\x01" * PAGE)  # page 0 written, pages 1.. holes
        file.seek(PAGE * (PAGES - 1))
        file.write(b"\x02" * PAGE)  # the last page written
    before = allocated(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert ResidentWindow.open(fd, 0, PAGES * PAGE) is None
        assert ResidentWindow.open(fd, PAGE, PAGE) is None
        assert ResidentWindow.open(fd, 0, PAGE) is not None  # the written page alone
    finally:
        os.close(fd)
    assert allocated(path) == before == 2 * PAGE


def test_a_window_past_the_end_of_a_shrunk_file_is_refused(shm_dir):
    """A guest file truncated under the sender: no mapping of the lost pages (SIGBUS), pread reports it."""
    path = shm_dir / "guest"
    path.write_bytes(b"\x03" * PAGES * PAGE)
    layout = open_source_layout([(0, str(path))], PAGE)
    try:
        os.truncate(path, 4 * PAGE)
        assert layout.resident_window(0, 4 * PAGE) is not None
        assert layout.resident_window(2 * PAGE, 8 * PAGE) is None
        built = BatchBuilder(TransferPlan("token", layout, PAGE, PAGES * PAGE, True))
        with pytest.raises(OSError, match="short read"):
            built.build(Chunk(1, (MemoryRange(0, PAGES * PAGE),), zero_records=False))
    finally:
        layout.close()


def test_a_sparse_guest_stays_sparse_on_the_source(shm_dir):
    """Every chunk of a guest with holes is sent right, and not one hole is allocated by reading it."""
    path = shm_dir / "guest"
    written = [0, 1, 7, 8, 9, 20, 31]
    with path.open("wb") as file:
        file.truncate(PAGES * PAGE)
        for page in written:
            file.seek(page * PAGE)
            file.write(bytes([page + 1]) * PAGE)
    before = allocated(path)
    layout = open_source_layout([(0, str(path))], PAGE)
    try:
        builder = BatchBuilder(TransferPlan("token", layout, PAGE, 8 * PAGE, True))
        sent = []
        for number, first in enumerate(range(0, PAGES, 8)):
            built = builder.build(Chunk(number + 1, (MemoryRange(first * PAGE, 8 * PAGE),), zero_records=False))
            frame = built.frame or b""
            sent += [page for page in range(first, first + 8) if bytes([page + 1]) * PAGE in frame]
    finally:
        layout.close()
    assert sent == written
    assert allocated(path) == before == len(written) * PAGE


def frames(path: Path, ranges: tuple[MemoryRange, ...], in_place: bool, zero_records: bool) -> bytes | None:
    layout = open_source_layout([(0, str(path))], PAGE)
    try:
        if not in_place:
            layout.resident_window = lambda _gpa, _length: None  # type: ignore[method-assign]
        builder = BatchBuilder(TransferPlan("token", layout, PAGE, PAGES * PAGE, True))
        return builder.build(Chunk(3, ranges, zero_records=zero_records)).frame
    finally:
        layout.close()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, PAGES - 1), unique=True, max_size=PAGES),
    st.lists(st.tuples(st.integers(0, PAGES * PAGE - 1), st.integers(1, 6 * PAGE)), min_size=1, max_size=4),
    st.booleans(),
)
def test_in_place_and_pread_make_the_same_frame(tmp_path_factory, touched, spans, zero_records):
    """Whatever the pages and ranges (unaligned, a few of them), scanning in place frames the
    chunk byte for byte as reading it with pread does."""
    path = tmp_path_factory.mktemp("guest") / "guest"
    contents = bytearray(PAGES * PAGE)
    for page in touched:
        contents[page * PAGE : (page + 1) * PAGE] = bytes([page % 250 + 1]) * PAGE
    path.write_bytes(bytes(contents))
    ranges, end = [], 0
    for start, length in sorted(spans):
        start = max(start, end)
        length = min(length, PAGES * PAGE - start)
        if length > 0:
            ranges.append(MemoryRange(start, length))
            end = start + length
    if not ranges:
        return
    chunk_ranges = tuple(ranges)
    assert frames(path, chunk_ranges, True, zero_records) == frames(path, chunk_ranges, False, zero_records)


def test_a_written_guest_is_framed_from_its_mapping(shm_dir):
    """The in-place path is the one taken for a guest whose pages are all in memory: the
    frame is built from windows, and it is the guest's bytes."""
    path = shm_dir / "guest"
    contents = bytes(range(256)) * (PAGES * PAGE // 256)
    path.write_bytes(contents)
    layout = open_source_layout([(0, str(path))], PAGE)
    opened = []
    real = layout.resident_window

    def spy(gpa: int, length: int) -> ResidentWindow | None:
        window = real(gpa, length)
        opened.append(window)
        return window

    layout.resident_window = spy  # type: ignore[method-assign]
    try:
        built = BatchBuilder(TransferPlan("token", layout, PAGE, PAGES * PAGE, True)).build(
            Chunk(1, (MemoryRange(0, PAGES * PAGE),), zero_records=False)
        )
    finally:
        layout.close()
    assert len(opened) == 1 and opened[0] is not None
    assert contents in built.frame


HUGE = 2 << 20


@pytest.mark.e2e
def test_a_sparse_guest_on_hugetlbfs_migrates_and_no_hole_is_allocated(sender, receiver, hugetlbfs: Path) -> None:
    """hugetlbfs guest memory (written through a mapping: it takes no write(2)) with huge
    pages never touched: the destination equals the source, and reading the source took
    no huge page from the pool (a read through a mapping would take one for every hole)."""
    from livemig.receiver.registry import free_bytes
    from tests.helpers import assert_destination_equals_source, migrate

    path = hugetlbfs / "guest"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8 * HUGE)
        with mmap.mmap(fd, 8 * HUGE) as memory:
            for huge_page in (0, 1, 2, 3, 6):  # the first chunk (4 huge pages) all written
                memory[huge_page * HUGE : huge_page * HUGE + 4 * PAGE] = os.urandom(4 * PAGE)  # the rest stays zero
                memory[(huge_page + 1) * HUGE - PAGE : (huge_page + 1) * HUGE] = b"\x5a" * PAGE
    finally:
        os.close(fd)
    layout = open_source_layout([(0, str(path))], PAGE)
    try:
        # mincore(2) on a hugetlb mapping answers for that mapping's own page tables, not
        # for the file: a fresh window never qualifies, so hugetlbfs guests are read by pread.
        assert layout.resident_window(0, 4 * HUGE) is None
        assert layout.resident_window(4 * HUGE, 4 * HUGE) is None
    finally:
        layout.close()
    pool_before = free_bytes(hugetlbfs)
    status = migrate(sender.address, receiver.address, [(0, path)], connections=2, skip_zero_pages=True)
    assert status.state == pb.COMPLETED, status.error
    assert_destination_equals_source(status, [(0, path)])
    assert status.stats.transmitted_bytes == 5 * 5 * PAGE  # data pages only: the zeros and the holes stayed home
    assert free_bytes(hugetlbfs) == pool_before
