"""A bytes object filled in place (common/bytes_in_place.py): filled, finished once, not leaked."""

from __future__ import annotations

import sys
import tracemalloc

import pytest

from livemig.common.bytes_in_place import WritableBytes


def test_filled_in_place_and_finished_once():
    writable = WritableBytes(6)
    writable.view[:] = b"abcdef"
    writable.view[2:4] = b"XY"
    filled = writable.finish()
    assert type(filled) is bytes and filled == b"abXYef"
    assert hash(filled) == hash(b"abXYef")  # a bytes like any other once filled
    assert sys.getrefcount(filled) == 2  # ours and getrefcount's argument: nothing else holds it
    with pytest.raises(ValueError):
        writable.finish()
    with pytest.raises(ValueError):
        _ = writable.view
    writable.discard()  # a no-op once finished


def test_sizes_must_be_positive():
    with pytest.raises(ValueError):
        WritableBytes(0)


def test_neither_finished_nor_discarded_objects_leak():
    def churn() -> None:
        for _ in range(200):
            writable = WritableBytes(256 << 10)
            writable.view[:] = bytes(256 << 10)
            if _ % 2:
                writable.finish()
            else:
                writable.discard()

    churn()  # warm up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        churn()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 << 10, f"{grown} bytes still held after 200 objects of 256 KiB"
