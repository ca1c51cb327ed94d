"""The body of one receiver data worker: its own interpreter, port and page streams.

A data worker serves TransferPages (and health) on a port of its own; the
control process announces the ports in PrepareMigration's reply and the sender
spreads its connections over them, so writes of different connections run on
different cores. At most `max_streams` streams are served at once; one more is
refused at once with RESOURCE_EXHAUSTED (gRPC's maximum_concurrent_rpcs), never
parked.

The messages on the pipe are in receiver/worker_messages.py.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc

from livemig.common.allocator import recycle_large_blocks
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.stream_activity import QUIET_SECONDS, StreamActivity, give_back_if_grown, give_back_if_quiet
from livemig.common.tls import Security
from livemig.common.transfer_rpc import RECEIVER_SERVICE, TRANSFER_PAGES
from livemig.common.transport import ServiceHost
from livemig.common.worker_processes import PipeSender, UnknownMessage, ignore_stop_signals, log_through_parent
from livemig.receiver.data_service import DataService
from livemig.receiver.errors import Reason, ReceiverError, storage_error
from livemig.receiver.session_record import SessionRecord, record_name
from livemig.receiver.worker_messages import (
    BatchApplied,
    BatchRejected,
    EndSession,
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
from livemig.receiver.writer import SessionWriter

log = logging.getLogger("livemig.receiver")

PRELOAD = ["livemig.receiver.data_worker"]
ENDED_WRITERS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    index: int
    host: str
    port: int  # 0: any free port (the first start); a restarted worker takes its old one
    security: Security
    records_dir: Path
    max_streams: int
    max_message_bytes: int
    log_level: int
    unbound_stream_seconds: float = 60.0  # a stream must name its session within this (--idle-timeout)
    keep_buffers_seconds: float = QUIET_SECONDS  # freed buffers go back after this long without a stream


class WorkerWriters:
    """This process's writers, by token; a session seen for the first time is loaded
    from its record."""

    def __init__(self, records_dir: Path) -> None:
        self.records_dir = records_dir
        self._by_token: OrderedDict[str, SessionWriter] = OrderedDict()
        self._by_id: dict[str, SessionWriter] = {}
        self._lock = threading.Lock()

    def writer(self, token: str) -> SessionWriter:
        with self._lock:
            writer = self._by_token.get(token)
            if writer is not None:
                return writer
            try:
                record = SessionRecord.load(self.records_dir / record_name(token))
            except FileNotFoundError:
                raise ReceiverError(
                    Reason.UNKNOWN_SESSION, "session token does not name a session on this receiver"
                ) from None
            try:
                writer = SessionWriter(record)
            except OSError as error:
                raise storage_error(error, "opening destination memory") from error
            self._by_token[token] = writer
            self._by_id[record.session_id] = writer
            self._forget_old()
            return writer

    def end(self, session_id: str, state: str, expired_after: float) -> SessionWriter | None:
        """Stop the session's writes here; the caller releases the writer once it has said so."""
        with self._lock:
            writer = self._by_id.get(session_id)
        if writer is not None:
            writer.end(state, expired_after)
        return writer

    def forget(self, session_id: str) -> None:
        """Drop an ended writer: the session is active again (a refused completion), and its
        next stream loads it afresh from its record."""
        with self._lock:
            writer = self._by_id.pop(session_id, None)
            if writer is not None:
                self._by_token = OrderedDict((t, w) for t, w in self._by_token.items() if w is not writer)

    def _forget_old(self) -> None:
        ended = [token for token, w in self._by_token.items() if w.state != "active"]
        for token in ended[: max(0, len(ended) - ENDED_WRITERS_KEPT)]:
            writer = self._by_token.pop(token)
            self._by_id.pop(writer.session_id, None)


class PipeReports:
    """DataReports over the worker's pipe, to the control process."""

    def __init__(self, to_control: PipeSender) -> None:
        self.to_control = to_control

    def batch_applied(
        self, session_id: str, batch_id: int, attempt: int, written: int, zeroed: int, settled_below: int
    ) -> None:
        self.to_control.send(BatchApplied(session_id, batch_id, attempt, written, zeroed, settled_below))

    def batch_rejected(self, reason: Reason) -> None:
        self.to_control.send(BatchRejected(reason))

    def stream_changed(self, session_id: str, delta: int) -> None:
        self.to_control.send(StreamChanged(session_id, delta))


def add_data_service(service: DataService, server: grpc.Server) -> None:
    """TransferPages takes raw bytes (decoded in common/wire.py); nothing else is served here."""
    handler = grpc.stream_stream_rpc_method_handler(
        service.TransferPages, request_deserializer=None, response_serializer=pb.PageBatchAck.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(RECEIVER_SERVICE, {TRANSFER_PAGES: handler}),)
    )


def run_data_worker(spec: WorkerSpec, pipe) -> None:
    """Process entry point (started by the control process through the fork server)."""
    ignore_stop_signals()
    recycle_large_blocks()  # one heap, megabyte blocks reused; trimmed once no stream is open
    to_control = PipeSender(pipe)
    log_through_parent(to_control, spec.log_level)
    writers = WorkerWriters(spec.records_dir)
    host = ServiceHost(
        [RECEIVER_SERVICE],
        max_workers=spec.max_streams + 4,
        max_message_bytes=spec.max_message_bytes,
        maximum_concurrent_rpcs=spec.max_streams,
    )
    activity = StreamActivity(spec.keep_buffers_seconds)
    add_data_service(DataService(writers, PipeReports(to_control), spec.unbound_stream_seconds, activity), host.server)
    try:
        port = host.start(f"{spec.host}:{spec.port}", spec.security.server_credentials())
    except (OSError, RuntimeError) as error:
        to_control.send(ListenFailed(str(error)))
        return
    to_control.send(Listening(port))
    grace: float | None = None
    while grace is None:
        try:
            if not pipe.poll(activity.seconds_until_due()):
                give_back_if_quiet(activity)  # no stream for a while: the buffers go back
                continue
            message: ToWorker = pipe.recv()
        except (EOFError, OSError):
            break  # the control process is gone
        grace = obey(message, writers, activity, to_control)
    host.server.stop(grace or 0.0).wait()
    pipe.close()


def obey(message: ToWorker, writers: WorkerWriters, activity: StreamActivity, to_control: PipeSender) -> float | None:
    """Handle one message from the control process; returns the grace in seconds when
    told to stop, else None."""
    match message:
        case EndSession(session_id, state, expired_after):
            ended = writers.end(session_id, state, expired_after)
            to_control.send(SessionEnded(session_id))  # no write in flight: the control process may go on
            if ended is not None:
                ended.release()  # unmap and close off the control process's critical path
            # The session's buffers stay for the next one, and go back once no stream has been
            # open for a while (common/stream_activity.py); a heap grown far past that (a
            # session with many streams here) goes back now, busy or not.
            give_back_if_grown(activity)
        case ReopenSession(session_id):  # a refused completion: the session is active again
            writers.forget(session_id)
            to_control.send(SessionReopened(session_id))
        case Settle(number):
            to_control.send(Settled(number))  # after every report sent so far (one pipe, in order)
        case StopWorker(grace):
            return grace
        case _:
            raise UnknownMessage(message)
    return None
