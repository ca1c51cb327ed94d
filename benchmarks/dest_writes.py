"""N processes writing one destination file: pwrite against a shared mapping, side by side.

Run: .venv/bin/python benchmarks/dest_writes.py [--size-mib 2048] [--processes 1,2,4,8]

Why: every data worker of the receiver writes into the same destination file. On Linux a
write(2) to a tmpfs (shmem) file holds the file's inode lock for the whole copy, page
allocation included, so writers of one file run one at a time however many cores there
are. Stores through a MAP_SHARED mapping fault pages in under the page lock only, so
writers of disjoint pages run in parallel. `madvise(MADV_POPULATE_WRITE)` allocates a
range's pages in one call (and reports a full tmpfs as an error instead of SIGBUS).

Each process writes its share of 4 MiB batches into a fresh sparse file on /dev/shm;
`--scatter` writes every other page only (one range per page, like a 50 % random image).
Prints GiB/s of payload per mode and process count.
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import time

BATCH = 4 << 20
PAGE = 4096
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def _ranges(first: int, size: int, scatter: bool) -> list[tuple[int, int]]:
    if not scatter:
        return [(first, size)]
    return [(offset, PAGE) for offset in range(first, first + size, 2 * PAGE)]


def _writer(path: str, mode: str, batches: list[int], scatter: bool, start: multiprocessing.Event) -> None:
    payload = memoryview(os.urandom(BATCH))
    fd = os.open(path, os.O_RDWR)
    size = os.fstat(fd).st_size
    mapping = mmap.mmap(fd, size) if mode != "pwrite" else None
    view = memoryview(mapping) if mapping is not None else None
    start.wait()
    for first in batches:
        for offset, length in _ranges(first, BATCH, scatter):
            if view is None:
                os.pwrite(fd, payload[:length], offset)
            else:
                if mode == "mmap+populate":
                    mapping.madvise(MADV_POPULATE_WRITE, offset, length)
                view[offset : offset + length] = payload[:length]
    if view is not None:
        view.release()
        mapping.close()
    os.close(fd)


def run(size: int, processes: int, mode: str, scatter: bool) -> float:
    path = f"/dev/shm/livemig-dest-writes-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    os.close(fd)
    try:
        batches = list(range(0, size, BATCH))
        start = multiprocessing.Event()
        workers = [
            multiprocessing.Process(target=_writer, args=(path, mode, batches[i::processes], scatter, start))
            for i in range(processes)
        ]
        for worker in workers:
            worker.start()
        time.sleep(0.3)
        began = time.perf_counter()
        start.set()
        for worker in workers:
            worker.join()
        elapsed = time.perf_counter() - began
        payload = size // 2 if scatter else size
        return payload / elapsed / (1 << 30)
    finally:
        os.unlink(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    counts = [int(n) for n in args.processes.split(",")]
    modes = ("pwrite", "mmap+populate", "mmap")
    print(f"{args.size_mib} MiB into one sparse /dev/shm file, 4 MiB batches; payload GiB/s, best of {args.repeat}")
    print("| pattern | mode | " + " | ".join(f"{n} proc" for n in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for scatter in (False, True):
        for mode in modes:
            cells = []
            for count in counts:
                best = max(run(args.size_mib << 20, count, mode, scatter) for _ in range(args.repeat))
                cells.append(f"{best:.2f}")
            pattern = "every other page" if scatter else "whole batches"
            print(f"| {pattern} | {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
