"""What the data workers did for one session, kept by the control process alone.

Data workers write batches into destination memory and report each one (through
their pipes) before they acknowledge it. A sender that lost a stream resends its
unacknowledged batches, possibly to another worker (a restarted one): the ledger
counts each batch id once, so the totals checked at completion are true
whichever process wrote what. A sender whose connection process died reads such
batches again, and a running guest may have changed their pages meanwhile: that
reading comes as a higher attempt of the same id, and the ledger counts the
highest attempt in place of the earlier ones, as the sender counts only the
reading it got acknowledged. It also knows how many streams of the session are
open on each worker and when the session last saw traffic: the idle timeout
measures the sender's silence, and an open stream is not silence.

Ids the sender settled (PageBatch.settled_below, receiver/batch_ids.py) are
forgotten, but only once every report written before the mark's is in: reports
come through one pipe per worker, and a worker may report a batch after another
worker reported a mark above its id (the pipes are read in no causal order). So
a mark waits in pending_mark() until the worker pool has had every worker
answer a message sent after the mark arrived (receiver/data_worker_pool.py); then
settle() applies it. Past the limit of unsettled ids the ledger stops counting
and the session cannot complete.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from livemig.receiver.batch_ids import DEFAULT_MAX_UNSETTLED_BATCHES, BatchIds


@dataclass(frozen=True, slots=True)
class Counted:
    """What one report changed in the totals."""

    new_batch: bool  # a batch id (or an id-less batch) not counted before
    written: int  # payload bytes written by this report (a later attempt's, rewritten, included)
    zeroed: int


NOT_COUNTED = Counted(False, 0, 0)


class SessionLedger:
    """Totals of one session, deduplicated by batch id; thread-safe."""

    def __init__(self, max_unsettled_batches: int = DEFAULT_MAX_UNSETTLED_BATCHES) -> None:
        self.written_bytes = 0
        self.zeroed_bytes = 0
        self.batches = 0
        self.last_activity = time.monotonic()
        # batch id -> (attempt, written, zeroed), of the ids not settled yet
        self._applied: BatchIds[tuple[int, int, int]] = BatchIds(max_unsettled_batches)
        self._reported_mark = 0  # the highest settled_below reported; settle() applies it
        self.overflowed = False  # more unsettled ids than the limit: the totals are not complete
        self._streams: defaultdict[int, int] = defaultdict(int)  # worker index -> open streams
        self._lock = threading.Lock()

    def record_batch(
        self, batch_id: int, written: int, zeroed: int, attempt: int = 0, settled_below: int = 0
    ) -> Counted:
        """A worker applied a batch. A batch id already counted at this attempt or a later
        one changes nothing, nor does a settled one (a late copy: counted already); a
        later attempt replaces the earlier one's bytes. Id 0 ("no id") always counts."""
        with self._lock:
            self.last_activity = time.monotonic()
            self._reported_mark = max(self._reported_mark, settled_below)
            if self._applied.is_settled(batch_id):
                return NOT_COUNTED
            earlier = self._applied.get(batch_id) if batch_id else None
            if earlier is not None and earlier[0] >= attempt:
                return NOT_COUNTED
            if batch_id:
                if not self._applied.has_room_for(batch_id):
                    self.overflowed = True
                    return NOT_COUNTED
                self._applied.put(batch_id, (attempt, written, zeroed))
            if earlier is not None:
                _attempt, earlier_written, earlier_zeroed = earlier
                self.written_bytes -= earlier_written
                self.zeroed_bytes -= earlier_zeroed
            else:
                self.batches += 1
            self.written_bytes += written
            self.zeroed_bytes += zeroed
            return Counted(earlier is None, written, zeroed)

    def wants_settling(self) -> bool:
        """A mark is pending and a quarter of the limit is taken: settle before the next round is due."""
        with self._lock:
            return self._reported_mark > self._applied.settled and 4 * len(self._applied) >= self._applied.limit

    def pending_mark(self) -> int:
        """A settled mark reported but not applied yet (0: none)."""
        with self._lock:
            return self._reported_mark if self._reported_mark > self._applied.settled else 0

    def settle(self, mark: int) -> None:
        """Forget ids below `mark`: call once every report written before the mark's is in."""
        with self._lock:
            self._applied.settle(mark)

    def remembered_ids(self) -> int:
        with self._lock:
            return len(self._applied)

    def stream_changed(self, worker: int, delta: int) -> None:
        with self._lock:
            self._streams[worker] = max(0, self._streams[worker] + delta)
            self.last_activity = time.monotonic()

    def worker_gone(self, worker: int) -> None:
        """A dead worker's streams are closed (the sender reconnects or fails)."""
        with self._lock:
            self._streams.pop(worker, None)
            self.last_activity = time.monotonic()

    def totals(self) -> tuple[int, int]:
        """(written bytes, batches), each batch id counted once."""
        with self._lock:
            return self.written_bytes, self.batches

    def idle_seconds(self) -> float | None:
        """Seconds without traffic and without an open stream; None while a stream is open."""
        with self._lock:
            if any(self._streams.values()):
                return None
            return time.monotonic() - self.last_activity
