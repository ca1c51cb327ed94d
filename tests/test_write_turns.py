"""pwrite writers of one destination file take turns (receiver/write_turns.py)."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.receiver.write_turns import WriteTurns


def _try_lock(path: str, result) -> None:
    fd = os.open(path, os.O_RDWR)  # a process of its own opens the file: its own description
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result.put("acquired")
    except OSError as error:
        result.put(errno.errorcode.get(error.errno, str(error.errno)))
    finally:
        os.close(fd)


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A destination file and this process's descriptor of it."""
    path = tmp_path / "destination"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    try:
        yield path, fd
    finally:
        os.close(fd)


def test_another_process_waits_for_the_turn(destination: tuple[Path, int]):
    path, fd = destination
    context = multiprocessing.get_context("spawn")
    turns = WriteTurns(fd)
    for held, expected in ((True, "EWOULDBLOCK"), (False, "acquired")):
        if held:
            turns.acquire()
        result = context.Queue()
        child = context.Process(target=_try_lock, args=(str(path), result))
        child.start()
        child.join(60)
        outcome = result.get(timeout=5)
        if held:
            turns.release()
        assert outcome in (expected, "EAGAIN" if expected == "EWOULDBLOCK" else expected)


def test_threads_of_one_process_take_turns_too(destination: tuple[Path, int]):
    """Threads share one open file description, which flock alone would let in at once."""
    _path, fd = destination
    turns = WriteTurns(fd)
    entered = threading.Event()

    def second_writer() -> None:
        with turns:
            entered.set()

    with turns:
        thread = threading.Thread(target=second_writer)
        thread.start()
        assert not entered.wait(0.3), "a second thread wrote while the first held the turn"
    assert entered.wait(30)
    thread.join(30)


def test_a_failed_flock_gives_the_thread_turn_back():
    turns = WriteTurns(1 << 24)  # above any descriptor limit: flock fails with EBADF
    for _ in range(2):  # the second try would hang if the first had kept the thread lock
        try:
            turns.acquire()
        except OSError as error:
            assert error.errno == errno.EBADF
        else:
            raise AssertionError("flock on a closed descriptor succeeded")
