"""gRPC servicer of the receiver's control process: Prepare, Complete, Abort.

Thin: translates between protobuf and the registry. Page streams are served by
the data workers (receiver/data_service.py) on the ports announced in
PrepareMigration's reply; TransferPages on this port is UNIMPLEMENTED.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import MemoryRange
from livemig.receiver import metrics
from livemig.receiver.errors import STATUS_OF_REASON, ReceiverError, check_owner, peer_identities
from livemig.receiver.registry import SessionRegistry
from livemig.receiver.session import Session

log = logging.getLogger("livemig.receiver")


def _abort(context: grpc.ServicerContext, error: ReceiverError) -> None:
    context.abort(STATUS_OF_REASON[error.reason], error.message)


class DataPorts(Protocol):
    """Where page streams go (the data workers' ports)."""

    @property
    def ports(self) -> list[int]: ...


class ReceiverService(pb_grpc.ReceiverServicer):
    def __init__(self, registry: SessionRegistry, data: DataPorts) -> None:
        self.registry = registry
        self.data = data

    def _owned(self, token: str, context: grpc.ServicerContext) -> Session:
        """The session of a token, if the caller is the client that prepared it (mutual TLS)."""
        session = self.registry.get(token)
        check_owner(session.owner, context)
        return session

    def PrepareMigration(self, request: pb.PrepareMigrationRequest, context: grpc.ServicerContext):
        layout = [MemoryRange(r.gpa, r.length) for r in request.layout.ranges]
        data_ports = self.data.ports
        if not data_ports:  # every data worker is being started again: no stream could land
            context.abort(grpc.StatusCode.UNAVAILABLE, "no data worker of this receiver is serving; try again shortly")
        try:
            session = self.registry.prepare(
                layout, request.page_size, request.migration_id, peer_identities(context), request.connections
            )
        except ReceiverError as error:
            _abort(context, error)
        metrics.ACTIVE_SESSIONS.set(self.registry.active_count())
        log.info(
            "prepared session %s for migration %s: %d bytes in %d regions, %s writes",
            session.session_id,
            session.migration_id,
            session.layout.total_bytes,
            len(layout),
            session.record.write_mode,
            extra={"migration_id": session.migration_id},
        )
        return pb.PrepareMigrationResponse(
            session_token=session.token,
            destination_regions=[
                pb.DestinationRegion(gpa=r.gpa, length=r.length, path=r.path) for r in session.destination_regions
            ],
            max_batch_bytes=session.max_batch_bytes,
            data_ports=data_ports,
            idle_timeout_ms=int(self.registry.limits.idle_timeout_seconds * 1000),
        )

    def CompleteMigration(self, request: pb.CompleteMigrationRequest, context: grpc.ServicerContext):
        try:
            session = self._owned(request.session_token, context)
            verified, allocated = self.registry.complete(
                session, request.transmitted_bytes, request.batches, request.digest
            )
        except ReceiverError as error:
            log.warning("completion refused: %s", error.message)
            _abort(context, error)
        metrics.SESSIONS.labels("completed").inc()
        metrics.ACTIVE_SESSIONS.set(self.registry.active_count())
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
            self.registry.abort(session)
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
