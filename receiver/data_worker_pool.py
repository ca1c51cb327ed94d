"""The receiver's data workers, from the control process: start, listen, restart, end sessions.

The control process serves PrepareMigration, CompleteMigration, AbortMigration
and health on its own port, in its own interpreter, so it answers however busy
or attacked the data workers are. Page streams go to the workers, one port
each. This pool is the one reader of the workers' reports: it feeds each
session's ledger (totals counted once per batch id) and the receiver's
Prometheus counters, which only the control process exports. A worker that dies
is started again on the same port; its open streams count as closed, and what
it reported before dying stays counted. One that cannot listen on its port again
(another process took it meanwhile) is tried again with a growing pause
(restart_delay), never given up: the port is not announced until it serves, and
while no worker serves the receiver's health says NOT_SERVING and
PrepareMigration is refused with UNAVAILABLE.

Settle rounds: a ledger forgets the batch ids a sender settled only once every
report written before the mark's report is in (receiver/ledger.py). Every
SETTLE_SECONDS (sooner for a ledger that holds a quarter of its limit), if some
session has a pending mark, the pool notes the marks, sends Settle(round) to
every worker and, once each has answered (or died), applies them: a worker
answers after everything it sent before, and whatever it sent before the mark
was written is older than the question.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.connection
import multiprocessing.process
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from livemig.common.worker_processes import UnknownMessage, WorkerLog, read_reports, relog, worker_context
from livemig.receiver import metrics
from livemig.receiver.data_worker import PRELOAD, WorkerSpec, run_data_worker
from livemig.receiver.registry import SessionRegistry
from livemig.receiver.worker_messages import (
    BatchApplied,
    BatchRejected,
    EndSession,
    FromWorker,
    ListenFailed,
    Listening,
    ReopenSession,
    SessionEnded,
    SessionReopened,
    Settle,
    Settled,
    StopWorker,
    StreamChanged,
    ToWorker,
)

log = logging.getLogger("livemig.receiver")

START_TIMEOUT_SECONDS = 60.0
END_TIMEOUT_SECONDS = 30.0
RESTART_PAUSE_SECONDS = 0.5
BIND_RETRY_FIRST_SECONDS = 0.25  # then doubled after each failure to listen, up to:
BIND_RETRY_MAX_SECONDS = 2.0
SETTLE_SECONDS = 1.0
_POLL_SECONDS = 0.2


@dataclass(slots=True)
class _Worker:
    spec: WorkerSpec
    process: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection
    port: int = 0
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    dead: bool = False  # could not listen at the first start, or the fork server is gone: never started again
    serving: bool = False  # listening now (its port is announced)
    bind_failures: int = 0  # failures to listen in a row since it last served
    restart_at: float | None = None  # dead process, to be started again then (reader thread)


def restart_delay(worker: _Worker, now: float) -> float:
    """How long to wait before starting a dead worker again: at once after a crash
    (a short pause when it died young, so a worker that dies at start does not spin),
    and with a doubling pause, at most BIND_RETRY_MAX_SECONDS, while its port is taken."""
    if worker.bind_failures:
        return min(BIND_RETRY_FIRST_SECONDS * 2 ** (worker.bind_failures - 1), BIND_RETRY_MAX_SECONDS)
    return RESTART_PAUSE_SECONDS if now - worker.started < 1.0 else 0.0


@dataclass(slots=True)
class _SettleRound:
    number: int
    marks: dict[str, int]  # session id -> settled mark to apply once every worker answered
    waiting: set[int]  # indices of the workers yet to answer


class DataWorkerPool:
    def __init__(
        self,
        specs: list[WorkerSpec],
        registry: SessionRegistry,
        on_serving: Callable[[bool], None] | None = None,
    ) -> None:
        self.registry = registry
        # Told (from the reader thread) when the first worker serves again or the last stops:
        # the receiver's health follows it.
        self._on_serving = on_serving
        self._any_serving = False
        self._context = worker_context(PRELOAD)
        self._changed = threading.Condition()
        self._stopping = False
        self._stopped = False
        self._start_error = ""
        self._ended: dict[str, set[int]] = {}  # session id -> workers that have ended it
        self._settle_round: _SettleRound | None = None  # reader thread only
        self._settle_rounds = 0
        self._settled_at = time.monotonic()
        self._settle_soon = False  # a ledger holds a quarter of its limit
        self._workers = [self._start(spec) for spec in specs]
        self._reader = threading.Thread(target=self._read, name="data-worker-reports", daemon=True)
        self._reader.start()
        # Before multiprocessing's own exit handler, which would SIGTERM the workers (they
        # ignore it: it is their parent's to act on) and wait for them forever.
        atexit.register(self.stop, 0.0)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        with self._changed:
            while not all(w.port for w in self._workers):
                if self._start_error:
                    self.stop(0.0)
                    raise RuntimeError(self._start_error)
                if time.monotonic() > deadline or self._stopping:
                    raise RuntimeError("data workers did not start listening")
                self._changed.wait(_POLL_SECONDS)

    @property
    def ports(self) -> list[int]:
        """The ports of the workers serving now (a worker being started again is left out)."""
        with self._changed:
            return [w.port for w in self._workers if w.serving]

    def _serving_changed(self) -> None:
        with self._changed:
            serving = any(w.serving for w in self._workers)
            changed = serving != self._any_serving
            self._any_serving = serving
        if not changed:
            return
        if not serving:
            log.error("no data worker is serving: health NOT_SERVING until one listens again")
        if self._on_serving is not None:
            self._on_serving(serving)

    def _start(self, spec: WorkerSpec) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=run_data_worker, args=(spec, child_end), name=f"livemig-data-{spec.index}", daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(spec, process, parent_end)

    # -- reports -------------------------------------------------------------------

    def _read(self) -> None:
        while True:
            with self._changed:
                if self._stopping and not any(w.process.is_alive() for w in self._workers):
                    return
                workers = list(self._workers)
            self._restart_due(workers)
            live = [worker for worker in workers if not worker.dead and worker.restart_at is None]
            if not read_reports(live, self._handle, self._died, _POLL_SECONDS):
                if self._stopping or not any(w.restart_at is not None for w in workers):
                    return
                time.sleep(_POLL_SECONDS)  # every worker waits for its restart
            self._settle(live)

    def _restart_due(self, workers: list[_Worker]) -> None:
        """Start again the dead workers whose pause is over (reader thread)."""
        now = time.monotonic()
        for worker in workers:
            if worker.restart_at is None or worker.restart_at > now or self._stopping:
                continue
            try:
                fresh = self._start(worker.spec)
            except (OSError, EOFError) as error:  # the fork server is gone: the receiver is going down
                log.error("data worker %d cannot be started again: %s", worker.spec.index, error)
                with self._changed:
                    worker.dead = True
                    worker.restart_at = None
                continue
            with self._changed:
                worker.process, worker.pipe, worker.started = fresh.process, fresh.pipe, fresh.started
                worker.restarts += 1
                worker.restart_at = None

    def _settle(self, live: list[_Worker]) -> None:
        """Start a settle round, or apply the marks of one every worker has answered."""
        current = self._settle_round
        if current is not None:
            if current.waiting:
                return
            for session_id, mark in current.marks.items():
                session = self.registry.by_id(session_id)
                if session is not None:
                    session.ledger.settle(mark)
            self._settle_round = None
        if time.monotonic() - self._settled_at < SETTLE_SECONDS and not self._settle_soon:
            return
        self._settled_at = time.monotonic()
        self._settle_soon = False
        marks = self.registry.pending_marks()
        if not marks:
            return
        self._settle_rounds += 1
        current = _SettleRound(self._settle_rounds, marks, set())
        self._settle_round = current
        for worker in live:
            try:
                worker.pipe.send(Settle(current.number))
            except (OSError, EOFError, ValueError):
                continue  # gone: nothing more of it to wait for
            current.waiting.add(worker.spec.index)

    def _handle(self, worker: _Worker, message: FromWorker) -> None:
        index = worker.spec.index
        match message:
            case BatchApplied(session_id, batch_id, attempt, written, zeroed, settled_below):
                session = self.registry.by_id(session_id)
                if session is not None:
                    counted = session.ledger.record_batch(batch_id, written, zeroed, attempt, settled_below)
                    if counted.new_batch and session.ledger.wants_settling():
                        self._settle_soon = True
                    metrics.WRITTEN_BYTES.inc(counted.written)
                    metrics.ZEROED_BYTES.inc(counted.zeroed)
                    if counted.new_batch:
                        metrics.BATCHES.inc()
            case Settled(number):
                if self._settle_round is not None and number == self._settle_round.number:
                    self._settle_round.waiting.discard(index)
            case StreamChanged(session_id, delta):
                session = self.registry.by_id(session_id)
                if session is not None:
                    session.ledger.stream_changed(index, delta)
            case BatchRejected(reason):
                metrics.REJECTED_BATCHES.labels(reason.value).inc()
            case SessionEnded(session_id) | SessionReopened(session_id):
                with self._changed:
                    self._ended.setdefault(session_id, set()).add(index)
                    self._changed.notify_all()
            case WorkerLog():
                relog(message)
            case Listening(port):
                with self._changed:
                    worker.port = port
                    worker.spec = replace(worker.spec, port=port)  # a restart takes the same port
                    worker.serving = True
                    worker.bind_failures = 0
                    self._changed.notify_all()
                log.info("data worker %d listening on %s:%d", index, worker.spec.host, port)
                self._serving_changed()
            case ListenFailed(error):  # its port is taken
                self._listen_failed(worker, error)
            case _:
                raise UnknownMessage(message)

    def _listen_failed(self, worker: _Worker, error: str) -> None:
        index = worker.spec.index
        with self._changed:
            if not worker.port:  # at start: the receiver does not start (one line, exit 1)
                worker.dead = True
                self._start_error = f"data worker {index} cannot listen on {worker.spec.host}: {error}"
            else:  # another process took the port meanwhile: tried again (restart_delay)
                worker.bind_failures += 1
            self._changed.notify_all()
        if worker.port:
            log.error(
                "data worker %d cannot serve on port %d: %s; trying again in %.2g s",
                index,
                worker.port,
                error,
                restart_delay(worker, time.monotonic()),
            )

    def _died(self, worker: _Worker) -> None:
        index = worker.spec.index
        self.registry.worker_gone(index)
        if self._settle_round is not None:
            self._settle_round.waiting.discard(index)  # all it said is in: nothing more to wait for
        with self._changed:
            worker.serving = False
            for ended in self._ended.values():
                ended.add(index)  # a dead worker holds no session open
            self._changed.notify_all()
            again = not (worker.dead or self._stopping)
            if again:
                delay = restart_delay(worker, time.monotonic())
                worker.restart_at = time.monotonic() + delay
        worker.pipe.close()
        self._serving_changed()
        if again and not worker.bind_failures:
            log.warning(
                "data worker %d (pid %s) died with exit code %s; starting it again on port %d",
                index,
                worker.process.pid,
                worker.process.exitcode,
                worker.spec.port,
            )

    # -- the registry's DataPlane -------------------------------------------------

    def end_session(self, session_id: str, state: str, expired_after: float) -> None:
        self._tell_every_worker(EndSession(session_id, state, expired_after), session_id)

    def reopen_session(self, session_id: str) -> None:
        self._tell_every_worker(ReopenSession(session_id), session_id)

    def _tell_every_worker(self, message: ToWorker, session_id: str) -> None:
        """Send `message` about a session to every live worker and wait until each has
        answered (SessionEnded, SessionReopened) or died."""
        with self._changed:
            self._ended[session_id] = set()
            workers = [w for w in self._workers if not w.dead and w.restart_at is None]
        for worker in workers:
            try:
                worker.pipe.send(message)
            except (OSError, EOFError, ValueError):
                with self._changed:
                    self._ended[session_id].add(worker.spec.index)  # dead: nothing open there
        deadline = time.monotonic() + END_TIMEOUT_SECONDS
        with self._changed:
            while len(self._ended[session_id]) < len(workers):
                if time.monotonic() > deadline:
                    log.error(
                        "data workers did not answer %s for session %s in %.0f s",
                        type(message).__name__,
                        session_id,
                        END_TIMEOUT_SECONDS,
                    )
                    break
                self._changed.wait(_POLL_SECONDS)
            del self._ended[session_id]

    def stop(self, grace: float) -> None:
        """Stop every worker (idempotent): in order, then by SIGKILL after grace + 5 s."""
        with self._changed:
            if self._stopped:
                return
            self._stopped = True
            self._stopping = True
            workers = list(self._workers)
        for worker in workers:
            with contextlib.suppress(OSError, EOFError, ValueError):
                worker.pipe.send(StopWorker(grace))
        for worker in workers:
            worker.process.join(grace + 5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self._reader.join(5)
        for worker in workers:
            worker.pipe.close()
