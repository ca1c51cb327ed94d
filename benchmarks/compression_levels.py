"""Which zstd level and lz4 mode to compress page batches with: ratio and speed per core.

Usage: .venv/bin/python benchmarks/compression_levels.py [--image GUEST.mem ...] [--mib 32]

Inputs, in 8 MiB batches (the default batch): random bytes (a touched synthetic
image), zero-heavy pages (a 512-byte random head per page, the rest zero), text
(Python's own sources, as page cache holds), and each --image (a booted guest's
RAM, e.g. from benchmarks/real_guests.py), non-zero pages only, as
--skip-zero-pages sends them. "adaptive" is what the sender pays (a probe, then
the batch compressed only if the probe shrank). One thread, so MiB/s is per
core; the best of 3.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from livemig.common import compression as codec
from livemig.common.proto import livemig_pb2 as pb

BATCH = 8 << 20
PAGE = 4096
METHODS = [
    ("zstd -1", pb.COMPRESSION_ZSTD, -1),
    ("zstd 1", pb.COMPRESSION_ZSTD, 1),
    ("zstd 3", pb.COMPRESSION_ZSTD, 3),
    ("lz4 0", pb.COMPRESSION_LZ4, 0),
    ("lz4 3", pb.COMPRESSION_LZ4, 3),
]


def inputs(mib: int, images: list[Path]) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(1)
    batches = max(1, (mib << 20) // BATCH)
    heads = np.zeros((BATCH // PAGE, PAGE), dtype=np.uint8)
    heads[:, :512] = rng.integers(0, 256, size=(BATCH // PAGE, 512), dtype=np.uint8)
    text = b"".join(p.read_bytes() for p in sorted(Path(np.__file__).parent.parent.rglob("*.py"))[:4000])
    found = {
        "random": [rng.bytes(BATCH) for _ in range(batches)],
        "zero-heavy pages": [heads.tobytes()] * batches,
        "text": [text[i : i + BATCH] for i in range(0, min(len(text), batches * BATCH) - BATCH + 1, BATCH)],
    }
    for image in images:
        pages = np.fromfile(image, dtype=np.uint8)[: (mib << 20) * 4].reshape(-1, PAGE)
        data = pages[pages.view(np.uint64).any(axis=1)].tobytes()
        found[f"guest {image.name}"] = [data[i : i + BATCH] for i in range(0, len(data) - BATCH + 1, BATCH)]
    return found


def measure(method: int, level: int, batches: list[bytes]) -> tuple[float, float, float, float]:
    """Ratio and compress MiB/s of every batch compressed; MiB/s of the adaptive sender
    (probe, then compressed or raw); decompress MiB/s (raw bytes, one thread)."""
    raw = sum(len(b) for b in batches)
    full = codec.PayloadCompressor(method, level=level, threshold=1e9, probe=False)
    adaptive = codec.PayloadCompressor(method, level=level)
    times = {"full": float("inf"), "adaptive": float("inf"), "decompress": float("inf")}
    for _ in range(3):
        started = time.perf_counter()
        packed = [full.compress([b], len(b)) for b in batches]
        times["full"] = min(times["full"], time.perf_counter() - started)
        started = time.perf_counter()
        for batch in batches:
            adaptive.compress([batch], len(batch))
        times["adaptive"] = min(times["adaptive"], time.perf_counter() - started)
        started = time.perf_counter()
        for data, batch in zip(packed, batches, strict=True):
            codec.decompress(method, memoryview(data), len(batch))
        times["decompress"] = min(times["decompress"], time.perf_counter() - started)
    ratio = raw / sum(len(p) for p in packed)
    return ratio, *(raw / times[k] / 2**20 for k in ("full", "adaptive", "decompress"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, action="append", default=[])
    parser.add_argument("--mib", type=int, default=32, help="MiB of each input (default 32)")
    args = parser.parse_args()
    print("| input | method level | ratio | compress MiB/s | adaptive MiB/s | decompress MiB/s |")
    print("|---|---|---|---|---|---|")
    for name, batches in inputs(args.mib, args.image).items():
        for label, method, level in METHODS:
            ratio, compress, adaptive, decompress = measure(method, level, batches)
            print(f"| {name} | {label} | {ratio:.2f} | {compress:.0f} | {adaptive:.0f} | {decompress:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
