"""gRPC servicer of the sender's control API: validates requests and runs migrations."""

from __future__ import annotations

import logging
import threading

import grpc

from livemig.common.guest_memory import LayoutError, open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import effective_page_size
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.sender.migration import FINAL_STATES, Migration, MigrationRequest

log = logging.getLogger("livemig.sender")

MAX_CONNECTIONS = 128
MIN_BATCH_BYTES = 64 << 10
MAX_BATCH_BYTES = 64 << 20
WATCH_INTERVAL_SECONDS = 0.25


class RequestError(ValueError):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validate_request(request: pb.StartMigrationRequest) -> MigrationRequest:
    """Apply the API's defaults for unset fields and reject what cannot work."""
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    if not request.destination.strip():
        raise RequestError(invalid, "destination (host:port of a receiver) is required")
    connections = request.connections or 1
    if connections > MAX_CONNECTIONS:
        raise RequestError(invalid, f"connections must be between 1 and {MAX_CONNECTIONS}, got {connections}")
    try:
        page_size = effective_page_size(request.page_size)
    except ValueError as error:
        raise RequestError(invalid, str(error)) from error
    max_batch = request.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES
    if not MIN_BATCH_BYTES <= max_batch <= MAX_BATCH_BYTES:
        raise RequestError(
            invalid, f"max_batch_bytes must be between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES}, got {max_batch}"
        )
    if not request.regions:
        raise RequestError(invalid, "at least one guest memory region is required")
    return MigrationRequest(
        destination=request.destination.strip(),
        connections=connections,
        skip_zero_pages=request.skip_zero_pages,
        page_size=page_size,
        verify=request.verify,
        max_batch_bytes=max_batch,
    )


class MigrationRegistry:
    """Every migration this sender ran, by id (kept for GetMigration after it ends)."""

    def __init__(self) -> None:
        self._migrations: dict[str, Migration] = {}
        self._lock = threading.Lock()

    def add(self, migration: Migration) -> None:
        with self._lock:
            self._migrations[migration.migration_id] = migration

    def get(self, migration_id: str) -> Migration | None:
        with self._lock:
            return self._migrations.get(migration_id)

    def all(self) -> list[Migration]:
        with self._lock:
            return list(self._migrations.values())


class SenderService(pb_grpc.SenderServicer):
    def __init__(self, registry: MigrationRegistry) -> None:
        self.registry = registry

    def StartMigration(self, request: pb.StartMigrationRequest, context: grpc.ServicerContext):
        try:
            migration_request = validate_request(request)
            layout = open_source_layout([(r.gpa, r.path) for r in request.regions], migration_request.page_size)
        except RequestError as error:
            context.abort(error.code, error.message)
        except FileNotFoundError as error:
            context.abort(grpc.StatusCode.NOT_FOUND, f"guest memory file not found: {error.filename}")
        except PermissionError as error:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"cannot read guest memory file: {error.filename}")
        except (LayoutError, OSError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        migration = Migration(migration_request, layout)
        self.registry.add(migration)
        log.info(
            "migration %s: %d bytes in %d regions to %s (connections=%d skip_zero_pages=%s verify=%s)",
            migration.migration_id,
            layout.total_bytes,
            len(layout.regions),
            migration_request.destination,
            migration_request.connections,
            migration_request.skip_zero_pages,
            migration_request.verify,
        )
        migration.start(on_final=lambda _m: None)
        return pb.StartMigrationResponse(migration_id=migration.migration_id)

    def _find(self, request: pb.MigrationRequest, context: grpc.ServicerContext) -> Migration:
        if not request.migration_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "migration_id is required")
        migration = self.registry.get(request.migration_id)
        if migration is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no migration with id {request.migration_id!r}")
        return migration

    def GetMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        return self._find(request, context).status()

    def WatchMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        migration = self._find(request, context)
        while context.is_active():
            status = migration.status()
            yield status
            if status.state in FINAL_STATES:
                return
            migration.wait_for_change(status.state, WATCH_INTERVAL_SECONDS)

    def CancelMigration(self, request: pb.MigrationRequest, context: grpc.ServicerContext):
        migration = self._find(request, context)
        status = migration.status()
        if status.state in FINAL_STATES and status.state != pb.CANCELLED:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"migration already ended {pb.MigrationState.Name(status.state)}",
            )
        migration.cancel()
        migration.join(timeout=30)
        return migration.status()

    def ListMigrations(self, request: pb.ListMigrationsRequest, context: grpc.ServicerContext):
        return pb.ListMigrationsResponse(migrations=[m.status() for m in self.registry.all()])
