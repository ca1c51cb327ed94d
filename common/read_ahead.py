"""Pull the next item of an iterator on another thread while the caller works on this one.

gRPC's synchronous API is strictly one step at a time per stream: a server handler
asks for the next message only after it has written the current one, and a client
builds its next message only after the previous send completed. The slow parts of
each step (socket reads and writes, pread, pwrite, page population) release the GIL,
so one item of read-ahead lets preparing the next message overlap this one's I/O.

That thread pays only where it has a core of its own. Handing each item between two
threads costs wakeups, and the item's bytes are made on one core and sent from
another; where every core is busy anyway (a 2-core sender streaming 2 connections)
nothing overlaps, and a sender spent 0.045-0.095 CPU s per GiB more with its
read-ahead than without (docs/benchmarks.md, stop 18). Inline has the same face
and pulls on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL_SECONDS = 0.2
_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """Iterates `items` on a thread of its own, at most `depth` items ahead of the consumer.

    An exception raised by `items` is raised to the consumer, in order. close() (also on
    leaving a for loop over it early) stops the thread at its next step: it never waits
    for good on a consumer that went away. After each next(), `producer_waited` holds
    how long that item had been ready before the consumer took it: a long wait says the
    consumer is the slower side.
    """

    def __init__(self, items: Iterator[T], depth: int = 1, name: str = "read-ahead") -> None:
        self._items = items
        self._ready: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._ended = False
        self.producer_waited = 0.0
        self._thread = threading.Thread(target=self._fetch, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        made = (item, time.monotonic())  # when it was ready: the consumer works out how long it waited
        while not self._stopped.is_set():
            try:
                self._ready.put(made, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _fetch(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failed(error))
            return
        self._put(_END)

    def next(self, timeout: float | None = None) -> T:
        """The next item; StopIteration at the end, queue.Empty if none came within `timeout`."""
        if self._ended:
            raise StopIteration
        item, made = self._ready.get(timeout=timeout)  # type: ignore[misc]
        self.producer_waited = time.monotonic() - made
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._ended = True
            raise item.error
        return item  # type: ignore[return-value]

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self.next()
                except StopIteration:
                    return
        finally:
            self.close()

    def close(self, join_seconds: float = 0.0) -> None:
        self._stopped.set()
        if join_seconds:
            self._thread.join(join_seconds)


class Inline(Generic[T]):
    """ReadAhead's interface, pulling `items` on the caller's thread when asked.

    next() returns when `items` does, so an iterator that may have nothing for a
    while must yield a placeholder now and then (the sender's builder yields None),
    or its caller waits that long. One caller pulls at a time: another waits up to
    `timeout` for it and then gets queue.Empty, as from a ReadAhead with nothing ready
    (a stream that replaced a broken one, while the old one's pull finishes)."""

    producer_waited = 0.0  # nothing is made before it is asked for

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self._pulling = threading.Lock()

    def next(self, timeout: float | None = None) -> T:
        """The next item; StopIteration at the end; an error of `items` as it is."""
        if not self._pulling.acquire(timeout=-1 if timeout is None else timeout):
            raise queue.Empty
        try:
            return next(self._items)
        finally:
            self._pulling.release()

    def close(self, join_seconds: float = 0.0) -> None:
        """Close `items` (a generator's finally blocks run), unless a pull is still going
        after `join_seconds`: then it is left to be collected."""
        if not self._pulling.acquire(timeout=join_seconds):
            return
        try:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()
        finally:
            self._pulling.release()
