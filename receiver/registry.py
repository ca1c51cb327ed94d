"""All sessions of one receiver, looked up by their token."""

from __future__ import annotations

import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from livemig.common.ranges import MemoryRange, effective_page_size
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.session import Session, SessionState

# Finished sessions are remembered (without their memory) so that a late batch
# gets "session is completed" rather than "unknown session".
FINISHED_SESSIONS_KEPT = 1024


class SessionRegistry:
    def __init__(self, memory_dir: Path, max_batch_bytes: int) -> None:
        self.memory_dir = memory_dir
        self.max_batch_bytes = max_batch_bytes
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def prepare(self, layout: Sequence[MemoryRange], page_size: int, migration_id: str) -> Session:
        try:
            size = effective_page_size(page_size)
        except ValueError as error:
            raise ReceiverError(Reason.BAD_LAYOUT, str(error)) from error
        session_id = uuid.uuid4().hex
        session = Session.create(
            session_id=session_id,
            token=secrets.token_urlsafe(32),
            migration_id=migration_id,
            directory=self.memory_dir / session_id,
            layout_ranges=layout,
            page_size=size,
            max_batch_bytes=self.max_batch_bytes,
        )
        with self._lock:
            self._sessions[session.token] = session
            self._forget_old_finished()
        return session

    def get(self, token: str) -> Session:
        if not token:
            raise ReceiverError(Reason.UNAUTHENTICATED, "no session token given")
        with self._lock:
            session = self._sessions.get(token)
        if session is None:
            raise ReceiverError(Reason.UNKNOWN_SESSION, "session token does not name a session on this receiver")
        return session

    def active_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.state is SessionState.ACTIVE)

    def _forget_old_finished(self) -> None:
        finished = [t for t, s in self._sessions.items() if s.state is not SessionState.ACTIVE]
        for token in finished[: max(0, len(finished) - FINISHED_SESSIONS_KEPT)]:
            del self._sessions[token]
