"""The batch ids a session's data workers wrote, shared by every one of them.

A sender may reach a session through several data workers: streams go to
different ports, and after a reconnect (or a hand-written client) the same batch
id may arrive at another worker than the first time. Two rules keep newer bytes
from being overwritten, and both must hold across workers, not per worker:

- a lower attempt of an id never overwrites a higher one (a connection process
  that died has its chunks read again under attempt + 1);
- an id below the settled mark (PageBatch.settled_below: acknowledged, never
  sent again) is a leftover: acknowledged, not written.

Kept per worker (issue 20), id 5 attempt 1 through worker 0 and then attempt 0
through worker 1 left the older bytes, and so did a settled id resent through
another worker. So the facts live in one small file per session in the
receiver's private state folder, mapped by every process that writes the
session, and changed under a lock that orders both threads and processes (the
same thread lock + flock(2) pair as receiver/write_turns.py).

The file is a ring of `limit` slots (--max-unsettled-batches) indexed by id
modulo limit, after a header holding the settled mark. A session may only send
ids below max(mark, 1) + limit, so two ids that are both unsettled never share a
slot, and what a session makes the receiver remember stays bounded (one more id
is refused: RESOURCE_EXHAUSTED). The mark a batch carries is checked against
the mark before it: a batch id (and so its mark) beyond that window is refused,
so a mark of 2^64-1 cannot settle, and silently drop, every later batch.

A slot: the id, its highest attempt written, and a word with a WRITTEN flag (some
attempt was) and the pid of the process writing it now (0: none). A process that died while writing leaves
its pid behind; a claim that finds a dead pid there takes the slot over (the
interrupted write is not counted as written, so the resend writes again).
"""

from __future__ import annotations

import enum
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.write_turns import WriteTurns

HEADER = struct.Struct("<Q")  # the settled mark
HEADER_BYTES = 64
SLOT = struct.Struct("<QII")  # id, highest attempt written, WRITTEN | pid writing it now
WRITTEN = 1 << 31  # an attempt was written (pids stay below 2^22 on Linux)
PID_BITS = WRITTEN - 1
WAIT_SECONDS = 0.002  # between looks while another process writes the same id (rare)


def table_bytes(limit: int) -> int:
    """Size of a session's table (sparse: pages are allocated as slots are used)."""
    return HEADER_BYTES + limit * SLOT.size


def create_table(path: Path, limit: int) -> None:
    """Make an empty table (the control process, at prepare)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, table_bytes(limit))
    finally:
        os.close(fd)


class Verdict(enum.Enum):
    WRITE = "write"  # claimed: write it, then release(..., written)
    SKIP = "skip"  # settled, or this attempt (or a later one) is written already: acknowledge only


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SharedBatchIds:
    """One process's handle on a session's table. Thread-safe and process-safe."""

    def __init__(self, path: Path | str, limit: int) -> None:
        self.limit = limit
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(self._fd, table_bytes(limit))
        except BaseException:
            os.close(self._fd)
            raise
        self._turns = WriteTurns(self._fd)
        self._pid = os.getpid()

    @property
    def settled(self) -> int:
        return HEADER.unpack_from(self._map, 0)[0]

    def _slot(self, batch_id: int) -> int:
        return HEADER_BYTES + (batch_id % self.limit) * SLOT.size

    def claim(self, batch_id: int, attempt: int, settled_below: int, active: Callable[[], None]) -> Verdict:
        """Decide whether this copy of `batch_id` (id > 0) is written. Raises ReceiverError
        (LIMIT) for an id beyond the window; waits while another process writes the same
        id; `active()` raises if the session ended meanwhile. The caller's threads never
        claim one id twice at once (the writer's in-process set of ids being written)."""
        while True:
            with self._turns:
                mark = HEADER.unpack_from(self._map, 0)[0]
                if 0 < batch_id < mark:
                    return Verdict.SKIP
                window_end = max(mark, 1) + self.limit
                if batch_id >= window_end:
                    raise ReceiverError(
                        Reason.LIMIT,
                        f"batch id {batch_id} is more than {self.limit} ids above the settled mark {mark} "
                        "(--max-unsettled-batches)",
                    )
                if settled_below > mark:  # at most batch_id (the caller checked): not settled itself
                    HEADER.pack_into(self._map, 0, settled_below)
                offset = self._slot(batch_id)
                slot_id, written_attempt, word = SLOT.unpack_from(self._map, offset)
                if slot_id != batch_id:  # an empty slot, or a settled id's: ours now
                    written_attempt, word = 0, 0
                writer = word & PID_BITS
                if writer and writer != self._pid and _alive(writer):
                    pass  # another process writes this id now: look again shortly
                else:
                    if word & WRITTEN and written_attempt >= attempt:  # this attempt or a later one is there
                        return Verdict.SKIP
                    SLOT.pack_into(self._map, offset, batch_id, written_attempt, (word & WRITTEN) | self._pid)
                    return Verdict.WRITE
            active()
            time.sleep(WAIT_SECONDS)

    def release(self, batch_id: int, attempt: int, written: bool) -> None:
        """The claimed write is over; `written`: it completed (a failed one is not applied)."""
        with self._turns:
            offset = self._slot(batch_id)
            slot_id, written_attempt, word = SLOT.unpack_from(self._map, offset)
            if slot_id != batch_id:
                return  # settled and reused meanwhile: nothing of ours left
            if written:
                written_attempt = max(written_attempt, attempt) if word & WRITTEN else attempt
                word |= WRITTEN
            SLOT.pack_into(self._map, offset, batch_id, written_attempt, word & WRITTEN)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
