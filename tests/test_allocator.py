"""The data-plane processes' allocator settings (common/allocator.py), in fresh processes.

Counted, not timed: minor page faults while megabyte blocks of varying size are
allocated, filled and freed on a thread with a window of four alive (as a connection
keeps its unacknowledged frames), and the RSS a trim gives back. glibc's counts are
deterministic: the same run gives the same faults on a loaded host.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator")

BLOCK = 4 << 20
PAGES_PER_BLOCK = BLOCK // 4096

_CHILD = """
import collections, json, resource, sys, threading
from livemig.common.allocator import free_heap_bytes, recycle_large_blocks, release_free_memory

BLOCK = int(sys.argv[2])

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

def frames(rounds):
    window = collections.deque()
    for i in range(rounds):
        window.append(bytes([i % 251 + 1]) * (BLOCK + (i % 7) * 65536 + 100))  # every page written
        if len(window) > 4:
            window.popleft()

result = {"recycled": sys.argv[1] == "recycle" and recycle_large_blocks()}

def run():
    frames(40)  # warm up: the heap reaches its working size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    frames(60)
    result["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    held = [bytes([7]) * BLOCK for _ in range(16)]
    result["peak"] = rss_kib()
    result["free_held"] = free_heap_bytes()
    del held
    result["kept"] = rss_kib()
    result["free_kept"] = free_heap_bytes()

worker = threading.Thread(target=run)
worker.start()
worker.join()
release_free_memory()
result["trimmed"] = rss_kib()
print(json.dumps(result))
"""


def _run(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, mode, str(BLOCK)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_recycled_blocks_are_not_faulted_in_again():
    default, recycled = _run("default"), _run("recycle")
    print(f"\nminor faults over 60 frames after warm-up: default {default['faults']}, recycled {recycled['faults']}")
    assert recycled["recycled"] is True
    # The 60 frames write 60 blocks' worth of pages. Measured on Debian 12's glibc,
    # the same on every run: 16096 faults with the defaults (a thread arena's heap
    # shrinks and regrows), 2080 recycled (about two blocks, as the heap settles).
    assert recycled["faults"] <= 4 * PAGES_PER_BLOCK, recycled
    assert recycled["faults"] <= default["faults"], (default, recycled)


def test_a_trim_gives_the_kept_memory_back():
    recycled = _run("recycle")
    held_kib = 16 * BLOCK // 1024
    assert recycled["kept"] >= recycled["peak"] - held_kib // 4, f"freed blocks are kept for reuse: {recycled}"
    assert recycled["trimmed"] <= recycled["peak"] - held_kib * 3 // 4, f"the trim returns them: {recycled}"


def test_the_heap_says_how_much_it_holds_free():
    """A data worker decides at a session's end whether to trim from this
    (receiver/data_worker.py): the 16 freed blocks are counted as free heap."""
    recycled = _run("recycle")
    assert recycled["free_kept"] is not None, "glibc 2.33 or later has mallinfo2"
    assert recycled["free_kept"] - recycled["free_held"] >= 15 * BLOCK, recycled
