"""Pull the next item of an iterator on another thread while the caller works on this one.

gRPC's synchronous API is strictly one step at a time per stream: a server handler
asks for the next message only after it has written the current one, and a client
builds its next message only after the previous send completed. The slow parts of
each step (socket reads and writes, pread, pwrite, page population) release the GIL,
so one item of read-ahead lets preparing the next message overlap this one's I/O.
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
