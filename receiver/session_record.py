"""What every receiver process needs to serve a session, and where it is stored.

The control process writes a session's record; data workers load it by the
stream's token the first time they see the session (or after a restart), so no
worker asks the control process. Records live under the receiver's private state
folder, named by a hash of the token: the token itself is never stored.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from livemig.receiver.batch_ids import DEFAULT_MAX_UNSETTLED_BATCHES
from livemig.receiver.write_mode import WriteMode

ACTIVE = "active"  # a session's state until it completes, is aborted or expires


def record_name(token: str) -> str:
    """A session record's file name: a hash, so the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RecordRegion:
    gpa: int
    length: int
    path: str  # the destination file
    first_page: int  # where its pages start in the session's received-pages map


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What every process needs to serve a session; written by the control process only.

    Stored under the receiver's private state folder, named by a hash of the token
    (the token itself is not stored), so a data worker that has not seen the
    session yet (or was restarted) finds it without asking the control process.
    """

    session_id: str
    migration_id: str
    owner: tuple[bytes, ...] | None  # certificate identities of the preparing client (mutual TLS)
    page_size: int
    max_batch_bytes: int
    regions: tuple[RecordRegion, ...]
    state: str = ACTIVE  # or completed / aborted / expired
    expired_after: float = 0.0
    write_mode: str = WriteMode.PWRITE
    max_unsettled_batches: int = DEFAULT_MAX_UNSETTLED_BATCHES  # receiver/batch_ids.py
    # One byte per page of every region (has a batch written data there?), one file a session.
    received_map: str = ""
    batch_ids: str = ""  # the ids its workers wrote (receiver/shared_batch_ids.py)

    @property
    def total_pages(self) -> int:
        return sum(r.length // self.page_size for r in self.regions)

    def dump(self, path: Path) -> None:
        """Atomically (write, then rename): a reader sees the old record or the new one."""
        partial = path.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(self))
        os.replace(partial, path)

    @staticmethod
    def load(path: Path) -> SessionRecord:
        return pickle.loads(path.read_bytes())
