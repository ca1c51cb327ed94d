"""common/read_ahead.py: order, errors, timeouts and a consumer that leaves early."""

from __future__ import annotations

import queue
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.read_ahead import ReadAhead


@given(st.lists(st.integers()), st.integers(min_value=1, max_value=4))
def test_yields_everything_in_order(items, depth) -> None:
    assert list(ReadAhead(iter(items), depth=depth)) == items


def test_an_error_of_the_source_reaches_the_consumer_after_the_items_before_it() -> None:
    def source():
        yield 1
        yield 2
        raise OSError("guest memory file shrank")

    ahead = ReadAhead(source())
    assert ahead.next(timeout=5) == 1
    assert ahead.next(timeout=5) == 2
    with pytest.raises(OSError, match="shrank"):
        ahead.next(timeout=5)
    with pytest.raises(StopIteration):
        ahead.next(timeout=5)


def test_next_waits_at_most_its_timeout() -> None:
    release = threading.Event()

    def slow():
        release.wait(10)
        yield "late"

    ahead = ReadAhead(slow())
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        ahead.next(timeout=0.1)
    assert time.monotonic() - started < 5
    release.set()
    assert ahead.next(timeout=10) == "late"


def test_fetches_at_most_depth_ahead_and_stops_when_closed() -> None:
    pulled: list[int] = []

    def counting():
        for n in range(1000):
            pulled.append(n)
            yield n

    ahead = ReadAhead(counting(), depth=1)
    assert ahead.next(timeout=5) == 0
    time.sleep(0.3)
    assert len(pulled) <= 3  # one handed out, one queued, one waiting to be queued
    ahead.close(join_seconds=5)
    assert not ahead._thread.is_alive()
    assert len(pulled) <= 3


def test_leaving_a_for_loop_early_stops_the_thread() -> None:
    ahead = ReadAhead(iter(range(1000)))
    for item in ahead:
        if item == 2:
            break
    ahead._thread.join(5)
    assert not ahead._thread.is_alive()
