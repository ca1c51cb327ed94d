"""The dirty-map protocol loses no write while a writer runs concurrently with collections."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from livemig.cli.memtouch import GuestMemoryWriter
from livemig.common.dirty_map import DirtyMap

PAGE = 4096


def test_collect_while_writing_loses_no_write(shm_dir):
    """Model of pre-copy: copy pages the map names, repeat; after the writer stops, one
    last collection makes the copy equal to memory."""
    pages = 256
    writer = GuestMemoryWriter(shm_dir / "mem", shm_dir / "mem.dirty", pages * PAGE, PAGE)
    sender_view = DirtyMap(shm_dir / "mem.dirty", pages)
    copy = bytearray(pages * PAGE)
    stop = threading.Event()

    def write() -> None:
        rng = np.random.default_rng(5)
        stamp = 0
        while not stop.is_set():
            stamp += 1
            writer.write_page(int(rng.integers(0, pages)), zero=bool(rng.random() < 0.2), stamp=stamp)

    def copy_dirty() -> int:
        dirty = sender_view.collect()
        memory = (shm_dir / "mem").read_bytes()
        for page in dirty.tolist():
            copy[page * PAGE : (page + 1) * PAGE] = memory[page * PAGE : (page + 1) * PAGE]
        return len(dirty)

    sender_view.clear()
    copy[:] = (shm_dir / "mem").read_bytes()  # iteration 0: everything
    thread = threading.Thread(target=write)
    thread.start()
    collected = sum(copy_dirty() for _ in range(200))
    stop.set()
    thread.join()
    copy_dirty()  # the guest is paused: the final pass
    assert collected > 0 and writer.writes > 0
    assert bytes(copy) == (shm_dir / "mem").read_bytes()
    assert sender_view.count() == 0


def test_map_size_must_match_region(shm_dir):
    (shm_dir / "map").write_bytes(bytes(10))
    with pytest.raises(ValueError, match="11 pages"):
        DirtyMap(shm_dir / "map", 11)
