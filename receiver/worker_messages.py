"""Every message between the receiver's control process and a data worker, one type each.

The control process (receiver/data_worker_pool.py) sends ToWorker messages; a data
worker (receiver/data_worker.py) sends FromWorker messages. Each side handles them
with an exhaustive `match`, and a message of another type raises UnknownMessage:
both ends ship together, so one is a bug, never input. A closed pipe means the
control process is gone: the worker stops.

  control -> worker   EndSession, ReopenSession, Settle, StopWorker
  worker -> control   Listening or ListenFailed first; then BatchApplied, BatchRejected,
                      StreamChanged, SessionEnded, SessionReopened, Settled, WorkerLog

Settled answers Settle after every report the worker sent before it (one pipe, in
order): receiver/ledger.py says why the control process asks.
"""

from __future__ import annotations

from dataclasses import dataclass

from livemig.common.worker_processes import WorkerLog
from livemig.receiver.errors import Reason

# -- control -> worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndSession:
    """The session ended: stop its writes, answer SessionEnded, then close its files."""

    session_id: str
    state: str  # completed, aborted or expired (receiver/session.SessionState values)
    expired_after: float


@dataclass(frozen=True, slots=True)
class ReopenSession:
    """A refused completion: the session is active again; answer SessionReopened."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Settle:
    """A settle round: answer Settled(number) after every report sent so far."""

    number: int


@dataclass(frozen=True, slots=True)
class StopWorker:
    """The receiver stops: end the streams within `grace` seconds, then exit."""

    grace: float


ToWorker = EndSession | ReopenSession | Settle | StopWorker


# -- worker -> control ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listening:
    """The worker serves on `port` (announced to senders from now on)."""

    port: int


@dataclass(frozen=True, slots=True)
class ListenFailed:
    """The worker cannot listen on its port (taken by another process); it exits."""

    error: str


@dataclass(frozen=True, slots=True)
class BatchApplied:
    """A batch written (or acknowledged again without writing), before its acknowledgement."""

    session_id: str
    batch_id: int
    attempt: int
    written: int
    zeroed: int
    settled_below: int


@dataclass(frozen=True, slots=True)
class BatchRejected:
    """A batch refused, and why (the control process counts refusals by reason)."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class StreamChanged:
    """A stream of the session opened (+1) or closed (-1) on this worker."""

    session_id: str
    delta: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Answers EndSession: no write of the session is in flight here any more."""

    session_id: str


@dataclass(frozen=True, slots=True)
class SessionReopened:
    """Answers ReopenSession: the worker loads the session afresh on its next stream."""

    session_id: str


@dataclass(frozen=True, slots=True)
class Settled:
    """Answers Settle(number)."""

    number: int


FromWorker = (
    Listening
    | ListenFailed
    | BatchApplied
    | BatchRejected
    | StreamChanged
    | SessionEnded
    | SessionReopened
    | Settled
    | WorkerLog
)
