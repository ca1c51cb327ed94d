"""The body of one receiver data worker: its own interpreter, port and page streams.

A data worker serves TransferPages (and health) on a port of its own; the
control process announces the ports in PrepareMigration's reply and the sender
spreads its connections over them, so writes of different connections run on
different cores. At most `max_streams` streams are served at once; one more is
refused at once with RESOURCE_EXHAUSTED (gRPC's maximum_concurrent_rpcs), never
parked.

Messages on the pipe (tuples):
  control -> worker: ("end", session_id, state, expired_after) | ("reopen", session_id)
                     | ("settle", round) | ("stop", grace_seconds)
  worker -> control: ("listening", port)
                     | ("batch", session_id, batch_id, attempt, written, zeroed, settled_below)
                     | ("rejected", reason value) | ("stream", session_id, delta)
                     | ("ended", session_id) | ("reopened", session_id) | ("settled", round) | ("log", ...)
"settled" answers "settle" after every report this worker sent before it
(receiver/ledger.py says why the control process asks).
A closed pipe means the control process is gone: the worker stops.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc

from livemig.common.allocator import recycle_large_blocks, release_free_memory
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.tls import Security
from livemig.common.transport import ServiceHost
from livemig.common.worker_processes import PipeSender, ignore_stop_signals, log_through_parent
from livemig.receiver.data_service import DataService
from livemig.receiver.errors import Reason, ReceiverError, storage_error
from livemig.receiver.registry import record_name
from livemig.receiver.stream_activity import StreamActivity
from livemig.receiver.writer import SessionRecord, SessionWriter

log = logging.getLogger("livemig.receiver")

PRELOAD = ["livemig.receiver.data_worker"]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Receiver"].full_name
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
    """DataReports over the worker's pipe."""

    def __init__(self, sender: PipeSender) -> None:
        self.sender = sender

    def batch_applied(
        self, session_id: str, batch_id: int, attempt: int, written: int, zeroed: int, settled_below: int
    ) -> None:
        self.sender.send(("batch", session_id, batch_id, attempt, written, zeroed, settled_below))

    def batch_rejected(self, reason: Reason) -> None:
        self.sender.send(("rejected", reason.value))

    def stream_changed(self, session_id: str, delta: int) -> None:
        self.sender.send(("stream", session_id, delta))


def add_data_service(service: DataService, server: grpc.Server) -> None:
    """TransferPages takes raw bytes (decoded in common/wire.py); nothing else is served here."""
    handler = grpc.stream_stream_rpc_method_handler(
        service.TransferPages, request_deserializer=None, response_serializer=pb.PageBatchAck.SerializeToString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, {"TransferPages": handler}),))


def run_data_worker(spec: WorkerSpec, pipe) -> None:
    """Process entry point (started by the control process through the fork server)."""
    ignore_stop_signals()
    recycle_large_blocks()  # one heap, megabyte blocks reused; trimmed at each session end
    sender = PipeSender(pipe)
    log_through_parent(sender, spec.log_level)
    writers = WorkerWriters(spec.records_dir)
    host = ServiceHost(
        [SERVICE_NAME],
        max_workers=spec.max_streams + 4,
        max_message_bytes=spec.max_message_bytes,
        maximum_concurrent_rpcs=spec.max_streams,
    )
    activity = StreamActivity()
    add_data_service(DataService(writers, PipeReports(sender), spec.unbound_stream_seconds, activity), host.server)
    try:
        port = host.start(f"{spec.host}:{spec.port}", spec.security.server_credentials())
    except (OSError, RuntimeError) as error:
        sender.send(("failed", str(error)))
        return
    sender.send(("listening", port))
    grace = 0.0
    while True:
        try:
            if not pipe.poll(activity.quiet_seconds):
                if activity.due_for_trim():  # what streams freed after a session's end
                    release_free_memory()
                    activity.trimmed()
                continue
            message = pipe.recv()
        except (EOFError, OSError):
            break  # the control process is gone
        if message[0] == "end":
            _kind, session_id, state, expired_after = message
            ended = writers.end(session_id, state, expired_after)
            sender.send(("ended", session_id))  # no write in flight: the control process may go on
            if ended is not None:
                ended.release()  # unmap and close off the control process's critical path
            release_free_memory()  # gRPC's and our buffers of the session go back to the system
            activity.trimmed()
        elif message[0] == "reopen":  # a refused completion: the session is active again
            writers.forget(message[1])
            sender.send(("reopened", message[1]))
        elif message[0] == "settle":
            sender.send(("settled", message[1]))  # after every report sent so far (one pipe, in order)
        elif message[0] == "stop":
            grace = message[1]
            break
    host.server.stop(grace).wait()
    pipe.close()
