"""The batch ids a session remembers, and when it may forget them.

A receiver remembers every batch id it applied (each data worker for its own
writes, the control process's ledger for the totals), so that a batch resent
after a broken stream is written and counted once. Kept for good, that memory
grows with every batch of a migration, and a client holding a session's token
could grow it without bound by sending tiny batches under fresh ids.

The sender says in every batch which ids are settled (PageBatch.settled_below):
every id below the mark was acknowledged and will never be sent again. Ids below
the mark are forgotten (in one pass whenever the remembered ids have doubled
since the last one, so the work per batch stays constant), which keeps what a
session remembers to the batches in flight however long the migration runs. At
most `limit` ids are remembered above the mark (--max-unsettled-batches): a
sender that holds back the mark while sending more than that is refused, so
what a session can make the receiver keep is bounded whatever its client does.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")

# The default of --max-unsettled-batches. A sender of ours keeps a few batches in
# flight per connection; the mark stays behind only while one of them waits for its
# acknowledgement (at most ~75 s for 8 MiB on a crawling link, sender/stream.py), and
# other connections may send ~600 batches a second meanwhile (8 MiB batches at
# 4.5 GiB/s): 2**18 leaves room for several minutes of that. Per id the ledger keeps
# 170 bytes and a data worker 74 (tracemalloc), so at the limit a session holds
# 45 MB in the control process and 19 MB in each data worker its streams reach.
DEFAULT_MAX_UNSETTLED_BATCHES = 1 << 18
# Settled ids are not looked for until this many are remembered (or a quarter of
# the limit, when that is less: the ledger asks for a settle round at a quarter).
PRUNE_FLOOR = 4096


class BatchIds(Generic[V]):
    """Remembered batch ids (id -> V) above a settled mark; not thread-safe (callers lock)."""

    def __init__(self, limit: int = DEFAULT_MAX_UNSETTLED_BATCHES) -> None:
        if limit < 1:
            raise ValueError("the limit must be at least 1")
        self.limit = limit
        self.settled = 0  # every id below is forgotten; 0: none
        self._entries: dict[int, V] = {}
        self._floor = min(PRUNE_FLOOR, max(1, limit // 4))
        self._prune_at = self._floor
        self._pruned_to = 0  # the mark of the last pass

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, batch_id: int, default: V | None = None) -> V | None:
        return self._entries.get(batch_id, default)

    def is_settled(self, batch_id: int) -> bool:
        """Below the mark: acknowledged, never sent again; a copy now is a leftover.
        Id 0 ("no id") is never settled."""
        return 0 < batch_id < self.settled

    def settle(self, mark: int) -> None:
        """Every id below `mark` is settled (a lower mark than before changes nothing)."""
        if mark > self.settled:
            self.settled = mark
            if len(self._entries) >= self._prune_at:
                self._prune()

    def has_room_for(self, batch_id: int) -> bool:
        """Can `batch_id` be remembered (already is, or fewer than `limit` are)?"""
        if batch_id in self._entries or len(self._entries) < self.limit:
            return True
        if self.settled > self._pruned_to:  # settled ids may still be here
            self._prune()
        return len(self._entries) < self.limit

    def put(self, batch_id: int, value: V) -> None:
        self._entries[batch_id] = value

    def _prune(self) -> None:
        settled = self.settled
        self._entries = {k: v for k, v in self._entries.items() if k >= settled}
        self._pruned_to = settled
        self._prune_at = max(self._floor, 2 * len(self._entries))
