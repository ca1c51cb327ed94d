"""gRPC servicer of the receiver: translates between protobuf and the session domain."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import MemoryRange
from livemig.common.wire import BatchDecodeError, decode_batch
from livemig.receiver import metrics
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.registry import SessionRegistry
from livemig.receiver.session import Session

log = logging.getLogger("livemig.receiver")

STATUS_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNKNOWN_SESSION: grpc.StatusCode.NOT_FOUND,
    Reason.WRONG_SESSION: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.LENGTH_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OVERLAP: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OVERSIZED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NOT_ACTIVE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.BAD_LAYOUT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.TOTALS_MISMATCH: grpc.StatusCode.DATA_LOSS,
    Reason.DIGEST_MISMATCH: grpc.StatusCode.DATA_LOSS,
    Reason.STORAGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.EXPIRED: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _peer(context: grpc.ServicerContext) -> tuple[bytes, ...] | None:
    """The caller's verified certificate identities (mutual TLS), or None."""
    identities = context.peer_identities()
    return tuple(identities) if identities else None


def _abort(context: grpc.ServicerContext, error: ReceiverError) -> None:
    context.abort(STATUS_OF_REASON[error.reason], error.message)


class ReceiverService(pb_grpc.ReceiverServicer):
    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry

    def _owned(self, token: str, context: grpc.ServicerContext) -> Session:
        """The session of a token, if the caller is the client that prepared it.

        Under mutual TLS a session belongs to the certificate identity that prepared
        it: another trusted client holding the token still cannot write into it.
        """
        session = self.registry.get(token)
        if session.owner is not None and _peer(context) != session.owner:
            raise ReceiverError(Reason.WRONG_SESSION, "session was prepared by another client certificate; refused")
        return session

    def PrepareMigration(self, request: pb.PrepareMigrationRequest, context: grpc.ServicerContext):
        layout = [MemoryRange(r.gpa, r.length) for r in request.layout.ranges]
        try:
            session = self.registry.prepare(layout, request.page_size, request.migration_id)
        except ReceiverError as error:
            _abort(context, error)
        session.owner = _peer(context)
        metrics.ACTIVE_SESSIONS.set(self.registry.active_count())
        log.info(
            "prepared session %s for migration %s: %d bytes in %d regions",
            session.session_id,
            session.migration_id,
            session.layout.total_bytes,
            len(layout),
            extra={"migration_id": session.migration_id},
        )
        return pb.PrepareMigrationResponse(
            session_token=session.token,
            destination_regions=[
                pb.DestinationRegion(gpa=r.gpa, length=r.length, path=r.path) for r in session.destination_regions
            ],
            max_batch_bytes=session.max_batch_bytes,
        )

    def TransferPages(self, request_iterator: Iterator[bytes], context: grpc.ServicerContext):
        """Raw bytes in (see common/wire.py), acknowledgements out; one stream, one session.

        The first batch binds the stream to its session; while a stream is open the
        session does not expire (gRPC keepalive ends the streams of dead peers).
        """
        bound: Session | None = None
        try:
            for raw in request_iterator:
                try:
                    try:
                        batch = decode_batch(raw)
                    except BatchDecodeError as error:
                        raise ReceiverError(Reason.MALFORMED, str(error)) from error
                    session = self._owned(batch.header.session_token, context)
                    if bound is not None and session is not bound:
                        raise ReceiverError(Reason.WRONG_SESSION, "stream is bound to another session")
                    if bound is None:
                        session.stream_opened()
                        bound = session
                    written, zeroed = session.apply(batch)
                except ReceiverError as error:
                    metrics.REJECTED_BATCHES.labels(error.reason.value).inc()
                    migration_id = bound.migration_id if bound is not None else ""
                    log.warning("rejected batch: %s", error.message, extra={"migration_id": migration_id})
                    _abort(context, error)
                metrics.WRITTEN_BYTES.inc(written)
                metrics.ZEROED_BYTES.inc(zeroed)
                metrics.BATCHES.inc()
                yield pb.PageBatchAck(batch_id=batch.header.batch_id, bytes_written=written)
        finally:
            if bound is not None:
                bound.stream_closed()

    def CompleteMigration(self, request: pb.CompleteMigrationRequest, context: grpc.ServicerContext):
        try:
            session = self._owned(request.session_token, context)
            verified, allocated = session.complete(request.transmitted_bytes, request.batches, request.digest)
        except ReceiverError as error:
            log.warning("completion refused: %s", error.message)
            _abort(context, error)
        metrics.SESSIONS.labels("completed").inc()
        metrics.ACTIVE_SESSIONS.set(self.registry.active_count())
        metrics.ALLOCATED_BYTES.set(allocated)
        log.info(
            "session %s (migration %s) completed: %d bytes written, %d allocated, verified=%s",
            session.session_id,
            session.migration_id,
            session.written_bytes,
            allocated,
            verified,
            extra={"migration_id": session.migration_id},
        )
        return pb.CompleteMigrationResponse(
            verified=verified, written_bytes=session.written_bytes, allocated_bytes=allocated
        )

    def AbortMigration(self, request: pb.AbortMigrationRequest, context: grpc.ServicerContext):
        try:
            session = self._owned(request.session_token, context)
            session.abort()
        except ReceiverError as error:
            _abort(context, error)
        metrics.SESSIONS.labels("aborted").inc()
        metrics.ACTIVE_SESSIONS.set(self.registry.active_count())
        log.info(
            "session %s (migration %s) aborted: %s",
            session.session_id,
            session.migration_id,
            request.reason,
            extra={"migration_id": session.migration_id},
        )
        return pb.AbortMigrationResponse()
