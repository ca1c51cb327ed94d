"""gRPC servicer of a data worker: TransferPages, translated to SessionWriter calls.

Raw bytes in (see common/wire.py), acknowledgements out; one stream, one
session. A stream is bound to its session by the SESSION_METADATA
entry when the sender gives one (so a stream that has nothing to send yet, while
all-zero memory is being scanned, already keeps its session alive), or else by
its first batch; it ends when its session ends (a bound stream waiting for its
next batch looks at its session's state every ENDED_SESSION_POLL_SECONDS).
Every applied batch is reported to the control process before it is
acknowledged. The next batch is received while this one is written
(common/read_ahead.py).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from typing import Protocol

import grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.read_ahead import ReadAhead
from livemig.common.stream_activity import StreamActivity
from livemig.common.transfer_rpc import SESSION_METADATA
from livemig.common.wire import BatchDecodeError, decode_batch, is_heartbeat
from livemig.receiver.errors import STATUS_OF_REASON, Reason, ReceiverError, check_owner
from livemig.receiver.writer import SessionWriter

log = logging.getLogger("livemig.receiver")

# A stream bound to a session that ended (completed, aborted, expired) is closed within
# this: idle bound streams of an aborted session held every slot of their worker, and no
# longer counted against --max-sessions (issue 20).
ENDED_SESSION_POLL_SECONDS = 0.25


class WriterLookup(Protocol):
    def writer(self, token: str) -> SessionWriter:
        """The session of a token in this process; raises ReceiverError."""


class DataReports(Protocol):
    """Where a data worker's facts go (the control process owns counters and metrics)."""

    def batch_applied(
        self, session_id: str, batch_id: int, attempt: int, written: int, zeroed: int, settled_below: int
    ) -> None: ...

    def batch_rejected(self, reason: Reason) -> None: ...

    def stream_changed(self, session_id: str, delta: int) -> None: ...


class DataService:
    def __init__(
        self,
        writers: WriterLookup,
        reports: DataReports,
        unbound_stream_seconds: float = 60.0,
        activity: StreamActivity | None = None,
    ) -> None:
        self.writers = writers
        self.reports = reports
        self.activity = activity or StreamActivity()  # when all streams closed (the worker trims then)
        # A stream that names no session (metadata or first batch) within this is closed:
        # idle unauthenticated streams would otherwise hold a worker's slots for good.
        self.unbound_stream_seconds = unbound_stream_seconds

    def _owned(self, token: str, context: grpc.ServicerContext) -> SessionWriter:
        """Under mutual TLS a session belongs to the certificate identity that prepared it:
        another trusted client holding the token still cannot write into it."""
        if not token:
            raise ReceiverError(Reason.UNAUTHENTICATED, "no session token given")
        writer = self.writers.writer(token)
        check_owner(writer.owner, context)
        return writer

    def _refuse(self, error: ReceiverError, bound: SessionWriter | None, context: grpc.ServicerContext) -> None:
        self.reports.batch_rejected(error.reason)
        migration_id = bound.migration_id if bound is not None else ""
        log.warning("rejected batch: %s", error.message, extra={"migration_id": migration_id})
        context.abort(STATUS_OF_REASON[error.reason], error.message)

    def TransferPages(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext):
        bound: SessionWriter | None = None
        requests: ReadAhead[bytes] | None = None
        self.activity.opened()
        try:
            token = dict(context.invocation_metadata()).get(SESSION_METADATA)
            if token is not None:
                try:
                    writer = self._owned(token, context)
                    writer.check_active()
                except ReceiverError as error:
                    self._refuse(error, None, context)
                bound = writer
                self.reports.stream_changed(bound.session_id, +1)
            # The next batch is received while this one is written (common/read_ahead.py).
            requests = ReadAhead(request_iterator, name="transfer-read-ahead")
            opened = last_traffic = time.monotonic()
            while True:
                try:
                    if bound is None:
                        left = self.unbound_stream_seconds - (time.monotonic() - opened)
                        raw = requests.next(timeout=max(left, 0.0))
                    else:
                        raw = requests.next(timeout=ENDED_SESSION_POLL_SECONDS)
                except StopIteration:
                    break
                except queue.Empty:
                    if bound is not None:
                        try:
                            bound.check_active()  # its session ended: the stream goes, its slot is free
                            silent = time.monotonic() - last_traffic
                            if silent >= self.unbound_stream_seconds:  # not even a heartbeat: the sender is gone
                                raise ReceiverError(
                                    Reason.EXPIRED,
                                    f"stream carried nothing for {silent:.1f} s (no batch, no heartbeat); closed",
                                )
                        except ReceiverError as error:
                            self._refuse(error, bound, context)
                        continue
                    self._refuse(
                        ReceiverError(
                            Reason.UNAUTHENTICATED,
                            f"stream named no session within {self.unbound_stream_seconds:g} s; closed",
                        ),
                        None,
                        context,
                    )
                last_traffic = time.monotonic()
                try:
                    try:
                        batch = decode_batch(raw)
                    except BatchDecodeError as error:
                        raise ReceiverError(Reason.MALFORMED, str(error)) from error
                    writer = self._owned(batch.header.session_token, context)
                    if bound is not None and writer is not bound:
                        raise ReceiverError(Reason.WRONG_SESSION, "stream is bound to another session")
                    if bound is None:
                        bound = writer
                        self.reports.stream_changed(writer.session_id, +1)
                    if is_heartbeat(batch):
                        continue  # the sender is there, with nothing to send: neither written nor acknowledged
                    written, zeroed, _wrote = writer.apply(batch)
                except ReceiverError as error:
                    self._refuse(error, bound, context)
                # Reported before it is acknowledged, also a copy acknowledged without writing
                # (`wrote` False): its first writing's report may have died with that worker
                # (killed after its write, its report still in a pipe the restart dropped),
                # and the ledger counts an id and attempt once however often it hears of it.
                header = batch.header
                self.reports.batch_applied(
                    writer.session_id, header.batch_id, header.attempt, written, zeroed, header.settled_below
                )
                yield pb.PageBatchAck(batch_id=batch.header.batch_id, bytes_written=written)
        finally:
            if requests is not None:
                requests.close()
            if bound is not None:
                self.reports.stream_changed(bound.session_id, -1)
            self.activity.closed()
