"""Synthetic guest memory images for the demo, benchmarks and tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

BLOCK_BYTES = 8 << 20


RUN_PAGES = 64  # pattern "runs": touched memory comes in 256 KiB stretches, like allocations


def touched_pages(pages: int, touched_ratio: float, rng: np.random.Generator, pattern: str) -> np.ndarray:
    """Which pages hold data: each page at random ("random", the worst case for range
    counts), or whole runs of RUN_PAGES pages at random ("runs", closer to real guests)."""
    if pattern == "random":
        return rng.random(pages) < touched_ratio
    if pattern == "runs":
        runs = -(-pages // RUN_PAGES)
        return np.repeat(rng.random(runs) < touched_ratio, RUN_PAGES)[:pages]
    raise ValueError(f"unknown pattern {pattern!r}")


def make_image(
    path: Path,
    size: int,
    touched_ratio: float,
    page_size: int = 4096,
    seed: int = 0,
    allocate: bool = False,
    pattern: str = "random",
) -> int:
    """Write a guest memory file where `touched_ratio` of the pages hold data (see touched_pages).

    Touched pages hold random bytes and end in a non-zero marker, so each is non-zero
    for certain. Blocks with no touched page are left as holes (memory the guest never
    touched), unless `allocate`: then zeros are written there (memory the guest
    zeroed), which a zero-page scan must read. Returns the number of touched pages.
    """
    if size % page_size:
        raise ValueError("image size must be a multiple of the page size")
    rng = np.random.default_rng(seed)
    pages = size // page_size
    touched = touched_pages(pages, touched_ratio, rng, pattern)
    pages_per_block = BLOCK_BYTES // page_size
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        for first in range(0, pages, pages_per_block):
            flags = touched[first : first + pages_per_block]
            if not flags.any():
                if allocate:
                    os.pwrite(fd, bytes(len(flags) * page_size), first * page_size)
                continue
            block = np.zeros((len(flags), page_size), dtype=np.uint8)
            count = int(flags.sum())
            block[flags] = rng.integers(0, 256, size=(count, page_size), dtype=np.uint8)
            block[flags, -1] = 0xA5
            os.pwrite(fd, block.tobytes(), first * page_size)
    finally:
        os.close(fd)
    return int(touched.sum())


def files_equal(first: Path, second: Path, block: int = BLOCK_BYTES) -> bool:
    """Byte-for-byte comparison (sizes included)."""
    if first.stat().st_size != second.stat().st_size:
        return False
    with first.open("rb") as a, second.open("rb") as b:
        while True:
            left, right = a.read(block), b.read(block)
            if left != right:
                return False
            if not left:
                return True


def tmpfs_dir() -> Path:
    """A folder on tmpfs when the machine has one (/dev/shm), like real guest memory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(os.environ.get("TMPDIR", "/tmp"))
