"""All sessions of one receiver, looked up by their token."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from livemig.common.ranges import MemoryRange, effective_page_size
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.receiver import metrics
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.session import Session, SessionState

# Finished sessions are remembered (without their memory) so that a late batch
# gets "session is completed" rather than "unknown session".
FINISHED_SESSIONS_KEPT = 1024
log = logging.getLogger("livemig.receiver")


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    """What protects the receiver from being run out of memory, disk or threads."""

    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_sessions: int = 16
    max_destination_bytes: int = 0  # 0: the free space of the memory directory
    idle_timeout_seconds: float = 60.0


class SessionRegistry:
    def __init__(self, memory_dir: Path, limits: ReceiverLimits | None = None) -> None:
        self.memory_dir = memory_dir
        self.limits = limits or ReceiverLimits()
        self.max_batch_bytes = self.limits.max_batch_bytes
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="session-reaper", daemon=True)
        self._reaper.start()

    def _check_limits(self, layout: Sequence[MemoryRange]) -> None:
        """Refuse a session the receiver cannot hold; called with the lock held."""
        active = [s for s in self._sessions.values() if s.state is SessionState.ACTIVE]
        if len(active) >= self.limits.max_sessions:
            raise ReceiverError(
                Reason.LIMIT,
                f"receiver is at its limit of {self.limits.max_sessions} concurrent migrations; try again later",
            )
        requested = sum(r.length for r in layout)
        in_use = sum(s.layout.total_bytes for s in active)
        budget = self.limits.max_destination_bytes
        if budget:
            if in_use + requested > budget:
                raise ReceiverError(
                    Reason.LIMIT,
                    f"destination memory budget exhausted: {in_use} bytes in use + {requested} requested "
                    f"> {budget} allowed (--max-destination-bytes)",
                )
        else:
            stat = os.statvfs(self.memory_dir)
            free = stat.f_bavail * stat.f_frsize
            # Sessions in flight may still fill their sparse files: count them as used.
            allocated = sum(s.allocated_bytes() for s in active)
            if requested + in_use - allocated > free:
                raise ReceiverError(
                    Reason.LIMIT,
                    f"not enough space in {self.memory_dir}: {free} bytes free, {requested} requested "
                    f"and {in_use - allocated} promised to migrations in flight",
                )

    def prepare(self, layout: Sequence[MemoryRange], page_size: int, migration_id: str) -> Session:
        try:
            size = effective_page_size(page_size)
        except ValueError as error:
            raise ReceiverError(Reason.BAD_LAYOUT, str(error)) from error
        with self._lock:
            self._check_limits(layout)
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
            try:
                self._check_limits(layout)  # again: another prepare may have won the race meanwhile
            except ReceiverError:
                session.abort()
                raise
            self._sessions[session.token] = session
            self._forget_old_finished()
        return session

    def _reap(self) -> None:
        interval = max(0.05, min(1.0, self.limits.idle_timeout_seconds / 4))
        while not self._reaper_stop.wait(interval):
            with self._lock:
                sessions = list(self._sessions.values())
            for session in sessions:
                if session.expire_if_idle(self.limits.idle_timeout_seconds):
                    log.warning(
                        "session %s (migration %s) expired after %g s without traffic; destination dropped",
                        session.session_id,
                        session.migration_id,
                        self.limits.idle_timeout_seconds,
                        extra={"migration_id": session.migration_id},
                    )
                    metrics.SESSIONS.labels("expired").inc()
                    metrics.ACTIVE_SESSIONS.set(self.active_count())

    def abort_all(self, reason: str) -> int:
        """On shutdown: drop every unfinished session's destination; returns how many."""
        with self._lock:
            sessions = list(self._sessions.values())
        aborted = 0
        for session in sessions:
            try:
                session.abort()
                aborted += 1
            except ReceiverError:
                continue
            log.info("session %s aborted: %s", session.session_id, reason, extra={"migration_id": session.migration_id})
        return aborted

    def close(self) -> None:
        self._reaper_stop.set()

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
