"""All sessions of one receiver (control process), looked up by their token.

The registry creates and ends sessions; ending one tells every data worker first
(DataPlane.end_session waits until each has finished its writes and closed its
files), so nothing is written into a session after it completed, was aborted or
expired. It publishes each session's record under the private state folder,
named by a hash of the token, where data workers find sessions they have not
seen yet.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from livemig.common.migration_ids import MIGRATION_ID_RULE, is_migration_id
from livemig.common.ranges import MemoryRange, effective_page_size
from livemig.receiver import metrics
from livemig.receiver.errors import Reason, ReceiverError, os_error_text
from livemig.receiver.limits import ReceiverLimits
from livemig.receiver.session import Session, SessionState
from livemig.receiver.session_record import record_name
from livemig.receiver.write_mode import session_write_mode

# Finished sessions are remembered (without their memory) so that a late batch
# gets "session is completed" rather than "unknown session".
FINISHED_SESSIONS_KEPT = 1024
log = logging.getLogger("livemig.receiver")


class DataPlane(Protocol):
    """The data workers, as the registry sees them."""

    def end_session(self, session_id: str, state: str, expired_after: float) -> None:
        """Tell every worker the session ended; returns when none writes any more (each closes its files just after)."""

    def reopen_session(self, session_id: str) -> None:
        """Tell every worker an ended session is active again (its completion was refused)."""


class NoDataPlane:
    """No data workers (sessions written in this process, as tests do)."""

    def end_session(self, session_id: str, state: str, expired_after: float) -> None:
        pass

    def reopen_session(self, session_id: str) -> None:
        pass


STATE_PREFIX = "livemig-receiver-state-"
MAX_CONNECTIONS = 4096  # page streams a sender may announce for one migration (its own limit is lower)
# Regions one layout may have: the sender's own limit. Each region is a file, opened by
# every data worker its batches reach (receiver/writer.py): without a bound, four
# sessions of 4000 regions held 16 018 descriptors in the control process.
MAX_REGIONS = 1024
HUGE_PAGE_POOLS = Path("/sys/kernel/mm/hugepages")


def free_bytes(directory: Path) -> int:
    """Free space for destination memory in `directory`.

    A hugetlbfs mount without a size= limit (systemd's /dev/hugepages is one) reports
    no blocks at all: its space is the free pages of the kernel's pool of its page size.
    """
    stat = os.statvfs(directory)
    if stat.f_blocks == 0:
        pool = HUGE_PAGE_POOLS / f"hugepages-{stat.f_bsize // 1024}kB" / "free_hugepages"
        try:
            return int(pool.read_text()) * stat.f_bsize
        except (OSError, ValueError):
            pass
    return stat.f_bavail * stat.f_frsize


def private_state_dir() -> Path:
    """A fresh folder for session records and received-pages maps, on tmpfs where there is
    one (the memory directory may be hugetlbfs, which holds no small files). Its name
    carries the receiver's pid; folders of receivers that died without cleaning up
    (SIGKILL) are swept here."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() else Path(tempfile.gettempdir())
    for stale in parent.glob(f"{STATE_PREFIX}*"):
        pid = stale.name.removeprefix(STATE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{STATE_PREFIX}{os.getpid()}-", dir=parent))


class SessionRegistry:
    def __init__(
        self,
        memory_dir: Path,
        limits: ReceiverLimits | None = None,
        state_dir: Path | None = None,
        data_plane: DataPlane | None = None,
    ) -> None:
        self.memory_dir = memory_dir
        self.limits = limits or ReceiverLimits()
        self.max_batch_bytes = self.limits.max_batch_bytes
        # Set by the Receiver (write_mode.usable_write_mode; its data workers); each session's
        # mode follows from them and the sender's connections (write_mode.session_write_mode).
        self.write_mode = self.limits.write_mode
        self.data_workers = 1
        # Private to the receiver: received-pages maps and session records.
        self.state_dir = state_dir or private_state_dir()
        self.records_dir = self.state_dir / "sessions"
        self.records_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_plane: DataPlane = data_plane or NoDataPlane()
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._by_id: dict[str, Session] = {}
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
            free = free_bytes(self.memory_dir)
            # Sessions in flight may still fill their sparse files: count them as used.
            allocated = sum(s.allocated_bytes() for s in active)
            if requested + in_use - allocated > free:
                raise ReceiverError(
                    Reason.LIMIT,
                    f"not enough space in the memory directory: {free} bytes free, {requested} requested "
                    f"and {in_use - allocated} promised to migrations in flight",
                )

    def prepare(
        self,
        layout: Sequence[MemoryRange],
        page_size: int,
        migration_id: str,
        owner: tuple[bytes, ...] | None = None,
        connections: int = 0,
    ) -> Session:
        try:
            size = effective_page_size(page_size)
        except ValueError as error:
            raise ReceiverError(Reason.BAD_LAYOUT, str(error)) from error
        if migration_id and not is_migration_id(migration_id):
            raise ReceiverError(Reason.MALFORMED, f"migration_id must be empty or {MIGRATION_ID_RULE}")
        if len(layout) > MAX_REGIONS:
            raise ReceiverError(
                Reason.BAD_LAYOUT, f"{len(layout)} regions in the layout; a migration has at most {MAX_REGIONS}"
            )
        if connections > MAX_CONNECTIONS:
            raise ReceiverError(
                Reason.MALFORMED, f"{connections} connections announced; a migration has at most {MAX_CONNECTIONS}"
            )
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
            state_directory=self.state_dir / session_id,
            owner=owner,
            write_mode=session_write_mode(self.write_mode, self.data_workers, connections),
            max_unsettled_batches=self.limits.max_unsettled_batches,
        )
        with self._lock:
            try:
                self._check_limits(layout)  # again: another prepare may have won the race meanwhile
                self._publish(session, SessionState.ACTIVE)
            except (ReceiverError, OSError) as error:
                session.abort()
                if isinstance(error, OSError):
                    raise ReceiverError(Reason.STORAGE, f"cannot record the session: {os_error_text(error)}") from error
                raise
            self._sessions[session.token] = session
            self._by_id[session.session_id] = session
            self._forget_old_finished()
        return session

    def _publish(self, session: Session, state: SessionState | None = None, expired_after: float = 0.0) -> None:
        """(Re)write the session's record where data workers look it up."""
        session.ended_record(state, expired_after).dump(self.records_dir / record_name(session.token))

    # -- ending sessions -------------------------------------------------------------

    def _end_in_workers(self, session: Session, state: SessionState, idle_seconds: float = 0.0) -> None:
        """Called with session.lock held and the session active. The record says the session
        ended before any worker is told, so a worker that loads it afterwards refuses too;
        returns once every worker has finished its writes (files are closed just after)."""
        self._publish(session, state, idle_seconds)
        self.data_plane.end_session(session.session_id, state.value, idle_seconds)

    def complete(self, session: Session, transmitted_bytes: int, batches: int, digest: bytes) -> tuple[bool, int]:
        """Writes stop everywhere, then the totals (and digest) are checked. A refused
        completion leaves the session active in every process, as the control process
        holds it (the sender may abort it, or complete it again): the workers once said
        "completed" while the control process still held it active."""
        with session.lock:
            session.check_active()
            self._end_in_workers(session, SessionState.COMPLETED)
            try:
                return session.complete(transmitted_bytes, batches, digest)
            except BaseException:
                if session.active:
                    self._publish(session, SessionState.ACTIVE)
                    self.data_plane.reopen_session(session.session_id)
                raise

    def abort(self, session: Session, state: SessionState = SessionState.ABORTED, idle_seconds: float = 0.0) -> None:
        with session.lock:
            session.check_active()
            self._end_in_workers(session, state, idle_seconds)
            session.abort(state, idle_seconds)

    def _reap(self) -> None:
        interval = max(0.05, min(1.0, self.limits.idle_timeout_seconds / 4))
        while not self._reaper_stop.wait(interval):
            with self._lock:
                sessions = [s for s in self._sessions.values() if s.active]
            for session in sessions:
                idle = session.ledger.idle_seconds()
                if idle is None or idle < self.limits.idle_timeout_seconds:
                    continue
                with session.lock:
                    if not session.active or (session.ledger.idle_seconds() or 0.0) < self.limits.idle_timeout_seconds:
                        continue
                    self.abort(session, SessionState.EXPIRED, self.limits.idle_timeout_seconds)
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
                self.abort(session)
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

    def worker_gone(self, worker: int) -> None:
        """A data worker died: its streams are closed."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.active]
        for session in sessions:
            session.ledger.worker_gone(worker)

    def pending_marks(self) -> dict[str, int]:
        """Session id -> the settled mark its ledger waits to apply, of active sessions with one."""
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.active]
        return {s.session_id: mark for s in sessions if (mark := s.ledger.pending_mark())}

    def by_id(self, session_id: str) -> Session | None:
        with self._lock:
            return self._by_id.get(session_id)

    def active_count(self) -> int:
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.state is SessionState.ACTIVE)

    def _forget_old_finished(self) -> None:
        finished = [t for t, s in self._sessions.items() if s.state is not SessionState.ACTIVE]
        for token in finished[: max(0, len(finished) - FINISHED_SESSIONS_KEPT)]:
            session = self._sessions.pop(token)
            self._by_id.pop(session.session_id, None)
            (self.records_dir / record_name(token)).unlink(missing_ok=True)

    def remove_state(self) -> None:
        """On shutdown, after every session ended: the private state folder goes."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
