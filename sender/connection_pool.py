"""Connection processes kept between migrations.

Starting a process costs tens of milliseconds even from the fork server (more on
a loaded host: three context switches per start), which a short migration
would feel for every connection. So the sender keeps finished connection
processes idle and hands them to the next migration; each serves one
migration's connection at a time (sender/connection_process.py). As many wait
as were last in use at once (a host that migrates with 8 connections keeps 8
even on 2 cores: starting 6 cost 250 ms per migration there), and at least
`max_idle` (default: one per core), at most MAX_KEPT. Up to `max_idle` of them
wait at most `idle_seconds`; the surplus beyond it (the oldest first) at most
`surplus_idle_seconds`, long enough for a migration retried or repeated at once
and short enough that one wide migration does not leave the host 64 idle
processes (~780 MiB) for minutes. Each serves at most MAX_USES migrations; a
process that died or ended badly is never reused.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.connection
import multiprocessing.process
import threading
import time
from dataclasses import dataclass, field

from livemig.common.stream_activity import QUIET_SECONDS
from livemig.common.worker_processes import usable_cores, worker_context
from livemig.sender.connection_messages import Exit
from livemig.sender.connection_process import PRELOAD, run_connection

IDLE_SECONDS = 120.0
SURPLUS_IDLE_SECONDS = 15.0
EXIT_SECONDS = 5.0
# Connection processes use one glibc arena, trimmed after each migration
# (common/allocator.py); with arenas limited to two a reused process stayed flat at
# 51-59 MiB over 100 migrations (60 -> 85 MiB with one per thread); a fresh
# process after this many migrations bounds whatever else a long life accumulates.
MAX_USES = 256
MAX_KEPT = 64  # idle processes, whatever the connection counts seen


@dataclass(slots=True)
class PooledProcess:
    process: multiprocessing.process.BaseProcess
    pipe: multiprocessing.connection.Connection
    idle_since: float = field(default_factory=time.monotonic)
    uses: int = 0

    @property
    def usable(self) -> bool:
        return self.process.is_alive() and not self.pipe.closed


def expired(
    idle: list[PooledProcess], now: float, max_idle: int, idle_seconds: float, surplus_idle_seconds: float
) -> list[PooledProcess]:
    """The idle processes whose wait is over: any idle longer than `idle_seconds`, and
    of the oldest beyond the `max_idle` newest, any idle longer than `surplus_idle_seconds`."""
    oldest_first = sorted(idle, key=lambda worker: worker.idle_since)
    surplus, surplus_wait = len(idle) - max_idle, min(surplus_idle_seconds, idle_seconds)
    return [
        worker
        for position, worker in enumerate(oldest_first)
        if now - worker.idle_since > (surplus_wait if position < surplus else idle_seconds)
    ]


class ConnectionProcessPool:
    """The sender's connection processes, idle and in use, for every migration (the
    sender's control process; one per sender). A migration's TransferPool takes its
    connections' processes from here and gives them back."""

    def __init__(
        self,
        max_idle: int | None = None,
        idle_seconds: float = IDLE_SECONDS,
        surplus_idle_seconds: float = SURPLUS_IDLE_SECONDS,
        keep_buffers_seconds: float = QUIET_SECONDS,
    ) -> None:
        self.max_idle = max_idle if max_idle is not None else max(2, usable_cores())
        self.idle_seconds = idle_seconds
        self.surplus_idle_seconds = surplus_idle_seconds
        # Each process started from now on gives its freed buffers back after this long
        # without a migration (SenderConfig.keep_buffers_seconds).
        self.keep_buffers_seconds = keep_buffers_seconds
        self._context = worker_context(PRELOAD)
        self._idle: list[PooledProcess] = []
        self._lock = threading.Lock()
        self._closed = False
        self._in_use = 0
        self._peak_in_use = 0  # since the last idle process expired
        self._reaper = threading.Thread(target=self._reap, name="connection-pool-reaper", daemon=True)
        self._reaper.start()
        # Before multiprocessing's own exit handler (registered earlier, so run later), which
        # would SIGTERM the workers (they ignore it: it is their parent's to act on) and wait.
        atexit.register(self.close)

    def acquire(self) -> PooledProcess:
        """An idle connection process, or a new one."""
        with self._lock:
            self._in_use += 1
            self._peak_in_use = max(self._peak_in_use, self._in_use)
            while self._idle:
                worker = self._idle.pop()
                if worker.usable:
                    return worker
                self._retire(worker)
        try:
            parent_end, child_end = self._context.Pipe(duplex=True)
            process = self._context.Process(
                target=run_connection,
                args=(logging.getLogger().getEffectiveLevel(), child_end, self.keep_buffers_seconds),
                name="livemig-connection",
                daemon=True,
            )
            process.start()
        except BaseException:
            with self._lock:
                self._in_use -= 1
            raise
        child_end.close()
        return PooledProcess(process, parent_end)

    def release(self, worker: PooledProcess) -> None:
        """A process whose migration part ended cleanly: keep it for the next migration."""
        worker.uses += 1
        with self._lock:
            self._in_use -= 1
            kept = min(MAX_KEPT, max(self.max_idle, self._peak_in_use))
            if worker.usable and not self._closed and worker.uses < MAX_USES and len(self._idle) < kept:
                worker.idle_since = time.monotonic()
                self._idle.append(worker)
                return
        self._retire(worker)

    def discard(self, worker: PooledProcess) -> None:
        """A process that died or did not end its part: never reused."""
        with self._lock:
            self._in_use -= 1
        self._end(worker)

    def _end(self, worker: PooledProcess) -> None:
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(EXIT_SECONDS)
        worker.pipe.close()

    def _retire(self, worker: PooledProcess) -> None:
        with contextlib.suppress(OSError, EOFError, ValueError):
            worker.pipe.send(Exit())
        worker.process.join(EXIT_SECONDS)
        self._end(worker)

    def _reap(self) -> None:
        while True:
            time.sleep(min(self.idle_seconds, self.surplus_idle_seconds, 10.0) / 2)
            now = time.monotonic()
            with self._lock:
                stale = expired(self._idle, now, self.max_idle, self.idle_seconds, self.surplus_idle_seconds)
                self._idle = [w for w in self._idle if w not in stale]
                if stale:  # quiet for a while: keep only what is in use now (or max_idle)
                    self._peak_in_use = self._in_use
            for worker in stale:
                self._retire(worker)

    def close(self) -> None:
        """End every idle process (at shutdown); processes in use end with their migration."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            self._retire(worker)


_default: ConnectionProcessPool | None = None
_default_lock = threading.Lock()


def default_pool(keep_buffers_seconds: float | None = None) -> ConnectionProcessPool:
    """The sender's pool (one per sender process); `keep_buffers_seconds`, where given, for
    the processes it starts from now on."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ConnectionProcessPool()
        if keep_buffers_seconds is not None:
            _default.keep_buffers_seconds = keep_buffers_seconds
        return _default
