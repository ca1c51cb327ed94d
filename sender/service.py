"""gRPC servicer of the sender's control API: protobuf in, statuses out, nothing else.

Validation lives in `sender/requests.py` (one rule table per request), room for
one more migration in `sender/capacity.py`, one migration per guest in
`sender/claims.py`, opening a migration's resources in
`sender/resources.py`, admission of watch streams in `sender/watch.py`; each
raises a typed SenderError that the table below maps to a gRPC status, as the
receiver's servicer does.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from livemig.common.human import format_bytes
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE, Security
from livemig.sender.capacity import MigrationCapacity
from livemig.sender.claims import GuestClaims, migration_holdings
from livemig.sender.config import SenderConfig
from livemig.sender.errors import Reason, SenderError
from livemig.sender.migration import FINAL_STATES, Migration
from livemig.sender.pause_records import PauseRecords
from livemig.sender.preflight import check_migration
from livemig.sender.registry import MigrationRegistry
from livemig.sender.requests import validate_limits, validate_migration_id, validate_start
from livemig.sender.resources import acquire
from livemig.sender.watch import WatchGate

log = logging.getLogger("livemig.sender")

WATCH_INTERVAL_SECONDS = 0.25

STATUS_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.GUEST: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.UNKNOWN_MIGRATION: grpc.StatusCode.NOT_FOUND,
    Reason.FINISHED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def _abort(context: grpc.ServicerContext, error: SenderError) -> None:
    context.abort(STATUS_OF_REASON[error.reason], error.message)


def client_of(context: grpc.ServicerContext) -> str:
    """Who is calling, for per-client limits: the certificate identity under mutual TLS,
    else the peer's address without its port."""
    identities = context.peer_identities()
    if identities:
        return b"|".join(identities).decode(errors="replace")
    return context.peer().rpartition(":")[0]


class SenderService(pb_grpc.SenderServicer):
    def __init__(
        self, registry: MigrationRegistry, config: SenderConfig | None = None, security: Security = INSECURE
    ) -> None:
        self.registry = registry
        self.config = config or SenderConfig()
        self.security = security  # for the sender's own channels to receivers
        self.watches = WatchGate(self.config.max_watch_streams, self.config.max_watch_streams_per_client)
        self.capacity = MigrationCapacity(self.config.max_migrations, self.config.max_connections)
        self.claims = GuestClaims()  # one migration per guest
        self.pause_records = PauseRecords(self.config.state_dir)
        self.pause_records.resume_orphans()  # guests a dead sender left paused run again

    def StartMigration(self, request: pb.StartMigrationRequest, context: grpc.ServicerContext):
        migration_id = uuid.uuid4().hex
        try:
            migration_request = validate_start(request, self.config)
            reservation = self.capacity.reserve(migration_request.connections)  # before anything is opened
        except SenderError as error:
            _abort(context, error)
        resources = claim = None
        try:
            resources = acquire(migration_id, request, migration_request.page_size, self.config)
            claim = self.claims.claim(migration_id, *migration_holdings(resources))
            migration = Migration(
                migration_request,
                resources.layout,
                resources.guest,
                resources.dirty_log,
                migration_id,
                self.security,
                self.pause_records,
                self.config.chunk_span_factor,
            )
        except BaseException as error:
            # Everything taken so far goes back: the room, the claim, the files, the pidfd.
            reservation.release()
            if claim is not None:
                claim.release()
            if resources is not None:
                resources.release()
                resources.guest.close()
            if isinstance(error, SenderError):
                _abort(context, error)
            raise
        self.registry.add(migration)
        log.info(
            "migration %s: %s in %d regions to %s (connections=%d skip_zero_pages=%s verify=%s live=%s)",
            migration.migration_id,
            format_bytes(resources.layout.total_bytes),
            len(resources.layout.regions),
            migration_request.destination,
            migration_request.connections,
            migration_request.skip_zero_pages,
            migration_request.verify,
            migration.live,
            extra={"migration_id": migration.migration_id},
        )

        # The guest is free again at the final state (a retry may start at once); the room
        # for connection processes only once the thread has let them go.
        migration.start(on_exit=lambda _m: reservation.release(), on_final=lambda _m: claim.release())
        return pb.StartMigrationResponse(migration_id=migration.migration_id)

    def CheckMigration(self, request: pb.StartMigrationRequest, context: grpc.ServicerContext):
        """A preflight of the same request (sender/preflight.py): problems are the answer, not errors."""
        return check_migration(request, self.config, self.security, self.claims)

    def SetMigrationLimits(self, request: pb.MigrationLimits, context: grpc.ServicerContext):
        try:
            migration_id, changes = validate_limits(request, self.config)
            migration = self._find(pb.MigrationRequest(migration_id=migration_id))
            if migration.finished:
                raise SenderError(Reason.FINISHED, f"migration already ended {pb.MigrationState.Name(migration.state)}")
        except SenderError as error:
            _abort(context, error)
        migration.set_limits(**changes)
        return migration.status()

    def _find(self, request: pb.MigrationRequest) -> Migration:
        migration_id = validate_migration_id(request, self.config)
        migration = self.registry.get(migration_id)
        if migration is None:
            raise SenderError(Reason.UNKNOWN_MIGRATION, f"no migration with id {migration_id!r}")
        return migration

    def GetMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        try:
            return self._find(request).status()
        except SenderError as error:
            _abort(context, error)

    def WatchMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        """A status on every state, phase or iteration change, and every 250 ms between."""
        client = client_of(context)
        try:
            migration = self._find(request)
            self.watches.acquire(client)
        except SenderError as error:
            _abort(context, error)
        try:
            while context.is_active():
                key = migration.progress_key()
                status = migration.status()
                yield status
                if status.state in FINAL_STATES:
                    return
                migration.wait_for_change(key, WATCH_INTERVAL_SECONDS)
        finally:
            self.watches.release(client)

    def CancelMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        try:
            migration = self._find(request)
            status = migration.status()
            if status.state in FINAL_STATES and status.state != pb.CANCELLED:
                raise SenderError(Reason.FINISHED, f"migration already ended {pb.MigrationState.Name(status.state)}")
        except SenderError as error:
            _abort(context, error)
        migration.cancel()
        migration.join(timeout=30)
        return migration.status()

    def ListMigrations(self, request: pb.ListMigrationsRequest, context: grpc.ServicerContext):
        return pb.ListMigrationsResponse(migrations=[m.status() for m in self.registry.all()])
