"""`livemig memtouch`: a guest workload that writes memory and marks the dirty map.

Like the seed's memtouch, it makes a guest's memory busy while it is migrated:
it touches a share of the pages once, then (unless --once) keeps writing random
pages at a set rate from several threads, writing zeros into a share of them (a
guest freeing memory). Every write follows the dirty-map protocol of
docs/dirty-log.md: mark the page, write it, mark it again. SIGSTOP/SIGCONT pause
and resume it like a VMM pausing vCPUs.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livemig.common.dirty_map import DirtyMap

RANDOM_POOL_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TouchPlan:
    page_size: int
    touch_ratio: float
    rate_bytes_per_second: float
    threads: int
    zero_ratio: float
    once: bool
    duration: float
    seed: int


def default_dirty_log(memory: Path) -> Path:
    return memory.with_name(memory.name + ".dirty")


class GuestMemoryWriter:
    """Page writes into a mapped memory file, each bracketed by dirty marks."""

    def __init__(self, memory: Path, dirty_log: Path, size: int, page_size: int) -> None:
        fd = os.open(memory, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            self._mmap = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.pages = size // page_size
        self.page_size = page_size
        self.dirty = DirtyMap(dirty_log, self.pages, create=True)
        self._pool = np.random.default_rng(0).integers(1, 256, RANDOM_POOL_BYTES, dtype=np.uint8).tobytes()
        self._zero = bytes(page_size)
        self.writes = 0

    def write_page(self, page: int, zero: bool, stamp: int) -> None:
        offset = page * self.page_size
        if zero:
            content = self._zero
        else:
            start = (stamp * 7919) % (RANDOM_POOL_BYTES - self.page_size)
            content = stamp.to_bytes(8, "little") + self._pool[start + 8 : start + self.page_size]
        self.dirty.mark(page)
        self._mmap[offset : offset + self.page_size] = content
        self.dirty.mark(page)
        self.writes += 1


def run_memtouch(memory: Path, dirty_log: Path, size: int, plan: TouchPlan, pid_file: Path | None = None) -> int:
    writer = GuestMemoryWriter(memory, dirty_log, size, plan.page_size)
    rng = np.random.default_rng(plan.seed)
    touched = np.flatnonzero(rng.random(writer.pages) < plan.touch_ratio)
    for stamp, page in enumerate(touched.tolist(), start=1):
        writer.write_page(page, zero=False, stamp=stamp)
    if pid_file is not None:
        pid_file.write_text(f"{os.getpid()}\n")
    print(f"livemig memtouch ready pid={os.getpid()} pages={writer.pages} touched={len(touched)}", flush=True)
    stop = threading.Event()
    # The handler only records the signal: it runs in the main thread between two
    # bytecodes, possibly while that thread holds stop's internal lock inside
    # stop.wait(), so calling stop.set() from it could deadlock.
    signalled: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: signalled.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: signalled.append(signum))
    if not plan.once and plan.rate_bytes_per_second > 0:
        per_thread = plan.rate_bytes_per_second / plan.page_size / plan.threads
        threads = [
            threading.Thread(target=_write_loop, args=(writer, plan, per_thread, plan.seed + 1 + i, stop), daemon=True)
            for i in range(plan.threads)
        ]
        for thread in threads:
            thread.start()
    # Wait in short slices: a process signal may land on a writer thread, and the
    # Python-level handler runs only when the main thread wakes up.
    deadline = time.monotonic() + plan.duration if plan.duration else None
    while not signalled and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.1)
    stop.set()
    print(f"livemig memtouch done writes={writer.writes}", flush=True)
    return 0


CATCH_UP_SECONDS = 0.05  # at most this much of missed writing is made up after a pause


def _write_loop(
    writer: GuestMemoryWriter, plan: TouchPlan, pages_per_second: float, seed: int, stop: threading.Event
) -> None:
    """Write random pages at a steady rate (bursts of up to 16 pages, then sleep)."""
    rng = np.random.default_rng(seed)
    started = time.monotonic()
    done = 0
    stamp = seed << 32
    while not stop.is_set():
        due = int((time.monotonic() - started) * pages_per_second) - done
        missed = due - max(16, int(pages_per_second * CATCH_UP_SECONDS))
        if missed > 0:
            # A guest that was stopped (auto-converge, a loaded host) does not make up the
            # writes it missed: a vCPU held still does less work, it does not owe any.
            done += missed
            due -= missed
        if due <= 0:
            time.sleep(min(0.01, 1 / pages_per_second))
            continue
        burst = min(due, 16)
        pages = rng.integers(0, writer.pages, burst).tolist()
        zeros = (rng.random(burst) < plan.zero_ratio).tolist()
        for page, zero in zip(pages, zeros, strict=True):
            stamp += 1
            writer.write_page(page, zero, stamp)
        done += burst


def main_memtouch(memory: str, dirty_log: str | None, size: int, plan: TouchPlan, pid_file: str | None) -> None:
    """size 0: the existing file's size."""
    path = Path(memory)
    size = size or (path.stat().st_size if path.exists() else 0)
    if not size or size % plan.page_size:
        print("memtouch: give --size (a multiple of the page size) or an existing file", file=sys.stderr)
        sys.exit(2)
    dirty = Path(dirty_log) if dirty_log else default_dirty_log(path)
    try:
        code = run_memtouch(path, dirty, size, plan, Path(pid_file) if pid_file else None)
    except OSError as error:
        print(f"memtouch: {error.filename or path}: {error.strerror or error}", file=sys.stderr)
        code = 1
    sys.exit(code)
