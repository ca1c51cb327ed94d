"""N connection workers for the whole migration, fed one iteration at a time.

`send()` cuts an iteration's ranges into chunks (like Cloud Hypervisor's
`MemoryRangeTable::partition`), hands them to the workers through a bounded
queue and returns when every chunk was acknowledged: the iteration barrier.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable

from livemig.common.ranges import MemoryRange, RangeTable
from livemig.common.tls import INSECURE, Security
from livemig.common.transport import channel_options
from livemig.sender.stats import MigrationStats
from livemig.sender.worker import ConnectionWorker, TransferPlan, WorkItem

_POLL_SECONDS = 0.2


class TransferStopped(Exception):
    """The pool was stopped (cancel or a failed stream) before the iteration finished."""


class TransferPool:
    def __init__(
        self,
        destination: str,
        connections: int,
        plan: TransferPlan,
        stats: MigrationStats,
        stop: threading.Event,
        security: Security = INSECURE,
    ) -> None:
        self.plan = plan
        self.stop = stop
        self._work: queue.Queue[WorkItem | None] = queue.Queue(maxsize=2 * connections)
        self._outstanding = 0
        self._closed = False
        self._changed = threading.Condition()
        batch_ids = itertools.count(1)
        self._channels = [
            security.channel(destination, channel_options(plan.chunk_bytes, index)) for index in range(connections)
        ]
        self.workers = [
            ConnectionWorker(i, channel, plan, self._work, stats, batch_ids, stop, self._chunk_done)
            for i, channel in enumerate(self._channels)
        ]
        self._threads = [threading.Thread(target=w.run, name=f"conn-{w.index}", daemon=True) for w in self.workers]
        for thread in self._threads:
            thread.start()

    def _chunk_done(self, chunk_bytes: int) -> None:
        with self._changed:
            self._outstanding -= chunk_bytes
            self._changed.notify_all()

    def send(self, ranges: Iterable[MemoryRange], zero_records: bool) -> None:
        """Send every page of `ranges`; returns once all of it is acknowledged."""
        pieces = self.plan.layout.split_at_regions(RangeTable.of(ranges))
        for table in RangeTable(tuple(pieces)).partition(self.plan.chunk_bytes):
            with self._changed:
                self._outstanding += table.total_bytes
            self._put(WorkItem(table.ranges, zero_records))
        with self._changed:
            while self._outstanding > 0:
                if self.stop.is_set():
                    raise TransferStopped()
                self._changed.wait(_POLL_SECONDS)
        if self.stop.is_set():
            raise TransferStopped()

    def _put(self, item: WorkItem | None) -> None:
        while True:
            if self.stop.is_set():
                raise TransferStopped()
            try:
                self._work.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def first_error(self) -> BaseException | None:
        return next((w.error for w in self.workers if w.error is not None), None)

    def close(self) -> None:
        """End the streams (half-close after the last batch) and wait for the workers."""
        if self._closed:
            return
        self._closed = True
        try:
            for _ in self.workers:
                self._put(None)
        except TransferStopped:
            pass
        for thread in self._threads:
            thread.join()
        for channel in self._channels:
            channel.close()
