"""Worker processes both services start: how they are made and how they talk back.

Both data planes run one interpreter per connection (sender) or per data worker
(receiver), because one interpreter's GIL caps a migration at ~1.3 GiB/s however
many cores a host has. The parents run gRPC servers with live threads, which a
plain fork() must not copy, so workers come from a fork server: a clean
interpreter started once, with the heavy modules (grpc, numpy) preloaded, that
forks each worker in milliseconds.

Workers talk to their parent over one duplex multiprocessing pipe each. Pipe
sends are synchronous writes into the kernel: a message sent before a worker
dies is still read by the parent (a multiprocessing.Queue's feeder thread could
lose it). Log records travel the same pipe, so the parent's log format (text or
JSON, with migration_id) covers every line.
"""

from __future__ import annotations

import gc
import logging
import math
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.process
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


@dataclass(frozen=True, slots=True)
class WorkerLog:
    """A worker's log record, sent to its parent (both sides' message sets include it)."""

    logger: str
    level: int
    text: str


class UnknownMessage(TypeError):
    """A message no handler knows: a bug in this code (both ends ship together), never input."""

    def __init__(self, message: object) -> None:
        super().__init__(f"unknown message between processes: {message!r}")


# multiprocessing imports the parent's __main__ again in every worker; when that is
# the command line, its imports (click, rich, ...) would cost every worker ~90 ms.
_MAIN_MODULES = ("livemig.cli.main",)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity): the default number of workers."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """The fork-server context, with `preload` (and the command line, when it is what runs)
    imported once in the fork server."""
    context = multiprocessing.get_context("forkserver")
    mains = [name for name in _MAIN_MODULES if name in sys.modules]
    context.set_forkserver_preload(
        ["livemig.common.forkserver_signals", *preload, *mains, "livemig.common.forkserver_freeze"]
    )
    return context


def start_fork_server(preload: Sequence[str]) -> None:
    """Start the fork server now (at service start), not on the first migration.

    The service's own objects so far (its modules) are frozen too (gc.freeze), so
    the collections it runs after each migration skip them."""
    worker_context(preload)
    multiprocessing.forkserver.ensure_running()
    gc.freeze()


class PipeSender:
    """Thread-safe sends on a worker's pipe (several threads report at once)."""

    def __init__(self, connection: multiprocessing.connection.Connection) -> None:
        self.connection = connection
        self._lock = threading.Lock()

    def send(self, message: Any) -> bool:
        """False when the parent is gone (its end of the pipe closed)."""
        with self._lock:
            try:
                self.connection.send(message)
                return True
            except (OSError, EOFError, BrokenPipeError):
                return False


class PipeLogHandler(logging.Handler):
    """Sends a worker's log records to its parent as WorkerLog messages."""

    def __init__(self, sender: PipeSender) -> None:
        super().__init__()
        self.sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.sender.send(WorkerLog(record.name, record.levelno, text))
        except Exception:  # logging must never break the data path
            self.handleError(record)


def ignore_stop_signals() -> None:
    """In a worker: SIGINT and SIGTERM are for the parent, which stops its workers in order.

    A terminal's Ctrl-C and systemd's stop signal the whole process group; a worker
    that died on them would look like a crash to its parent mid-shutdown. A worker
    whose parent is gone sees its pipe close and stops by itself.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def log_through_parent(sender: PipeSender, level: int) -> None:
    """In a worker: every log record goes to the parent, nothing to this process's stderr."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(PipeLogHandler(sender))
    root.setLevel(level)


def relog(message: WorkerLog, extra: dict[str, str] | None = None) -> None:
    """In the parent: log a worker's record through the parent's own handlers."""
    logging.getLogger(message.logger).log(message.level, "%s", message.text, extra=extra or {})


class Worker(Protocol):
    """A worker as its parent sees it: its process and its end of the pipe."""

    @property
    def process(self) -> multiprocessing.process.BaseProcess: ...

    @property
    def pipe(self) -> multiprocessing.connection.Connection: ...


W = TypeVar("W", bound=Worker)


def read_reports(
    workers: Sequence[W], handle: Callable[[W, Any], None], died: Callable[[W], None], timeout: float
) -> bool:
    """One round of a parent's report loop: waits up to `timeout` for a message or a death,
    hands every message to handle(worker, message) in the order sent, and a death to
    died(worker) after everything the worker said before it died. False when there was
    nothing to wait on.

    It waits with one poll(2) on the pipes and process sentinels, not with
    multiprocessing.connection.wait, and drains a pipe with poll(2) before each read,
    not with Connection.poll: both build a selectors object per call, in Python. A data
    worker reports every batch; fed a report every 4 ms by two processes, the loop spent
    184 µs of CPU per report that way and 166 µs this way, most of the rest being the
    wakeup itself on this VM (the receiver control: 116-121 -> 96-106 µs per batch,
    docs/benchmarks.md, stop 18)."""
    waitables: dict[int, tuple[W, bool]] = {}  # fd -> (worker, it is the pipe)
    for worker in workers:
        if not worker.pipe.closed:
            waitables[worker.pipe.fileno()] = (worker, True)
        waitables[worker.process.sentinel] = (worker, False)
    if not waitables:
        return False
    for fd in _ready(list(waitables), timeout):
        worker, is_pipe = waitables[fd]
        if is_pipe:
            _drain(worker, handle)
        elif not worker.process.is_alive():
            _drain(worker, handle)  # what it said before it died counts
            died(worker)
    return True


def _ready(fds: list[int], timeout: float) -> list[int]:
    """The fds of `fds` that are readable, hung up or in error within `timeout` seconds."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _events in poller.poll(max(0, math.ceil(timeout * 1000)))]


def _drain(worker: W, handle: Callable[[W, Any], None]) -> None:
    while True:
        try:
            if worker.pipe.closed or not _ready([worker.pipe.fileno()], 0):
                return
            message = worker.pipe.recv()
        except (EOFError, OSError):
            return
        handle(worker, message)
