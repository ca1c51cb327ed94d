"""The verify digest: a function of the bytes alone, reading only what files hold."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common import digest
from livemig.common.digest import DIGEST_CHUNK, memory_digest
from livemig.common.guest_memory import MemoryLayout, open_source_layout

SIZE = 4 * DIGEST_CHUNK + 8192  # a short last chunk too


def sparse(path: Path, writes: dict[int, bytes], size: int = SIZE) -> Path:
    with path.open("wb") as file:
        file.truncate(size)
        for offset, data in writes.items():
            file.seek(offset)
            file.write(data)
    return path


def allocated(path: Path, source: Path) -> Path:
    path.write_bytes(source.read_bytes())  # the same bytes, zeros written: no holes
    assert os.stat(path).st_blocks * 512 >= os.stat(source).st_size
    return path


def digest_of(*paths: Path) -> bytes:
    layout = open_source_layout([(index << 32, str(path)) for index, path in enumerate(paths)], 4096)
    try:
        return memory_digest(layout)
    finally:
        layout.close()


writes = st.dictionaries(st.integers(0, SIZE - 64), st.binary(min_size=1, max_size=64), max_size=6)


@given(writes=writes, flip=st.integers(0, SIZE - 1))
def test_holes_and_written_zeros_agree_and_every_byte_counts(tmp_path_factory, writes, flip):
    folder = tmp_path_factory.mktemp("digest", numbered=True)
    holes = sparse(folder / "holes", writes)
    dense = allocated(folder / "dense", holes)
    assert digest_of(holes) == digest_of(dense)
    with dense.open("r+b") as file:
        file.seek(flip)
        old = file.read(1)
        file.seek(flip)
        file.write(bytes([old[0] ^ 0x5A]))
    assert digest_of(holes) != digest_of(dense)


def test_the_layout_is_part_of_the_digest(tmp_path):
    a = sparse(tmp_path / "a", {0: b"x"})
    b = sparse(tmp_path / "b", {0: b"x"})
    assert digest_of(a, b) != digest_of(a)


def test_only_chunks_with_data_are_read(tmp_path, monkeypatch):
    path = sparse(tmp_path / "guest", {3 * DIGEST_CHUNK + 5: b"data"})
    reads: list[int] = []
    original = MemoryLayout.read_into
    monkeypatch.setattr(
        MemoryLayout, "read_into", lambda self, gpa, buffer: (reads.append(gpa), original(self, gpa, buffer))
    )
    digest_of(path)
    if reads != [3 * DIGEST_CHUNK]:  # tmpfs and ext4 report holes; a filesystem that does not reads all
        assert len(reads) == -(-SIZE // DIGEST_CHUNK)


def test_the_verify_estimate_counts_what_the_files_hold_on_both_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(digest, "digest_rate", lambda: float(DIGEST_CHUNK))  # 1 MiB/s: seconds = MiB
    path = sparse(tmp_path / "guest", {0: b"x", 3 * DIGEST_CHUNK: b"y"})
    layout = open_source_layout([(0, str(path))], 4096)
    try:
        held = os.stat(path).st_blocks * 512
        assert digest.expected_verify_seconds(layout) == 2 * held / DIGEST_CHUNK
        assert held < SIZE  # holes are free
    finally:
        layout.close()


def test_the_digest_rate_is_the_fastest_of_its_samples(monkeypatch):
    """A sample slowed by a busy moment must not stand for the machine: the rate is
    that of the fastest sample."""
    times = iter([0.0, 1.0, 10.0, 10.004, 20.0, 20.5])  # samples of 1 s, 4 ms and 0.5 s
    monkeypatch.setattr(digest.time, "perf_counter", lambda: next(times))
    assert digest.digest_rate(8 << 20, samples=3) == pytest.approx((8 << 20) / 0.004)
