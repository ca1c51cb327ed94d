"""gRPC servicer of the sender's control API: validates requests and runs migrations."""

from __future__ import annotations

import logging
import threading
import uuid

import grpc

from livemig.common.guest_memory import LayoutError, open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import effective_page_size
from livemig.common.tls import INSECURE, Security
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.sender.dirty_log import DirtyLog
from livemig.sender.guest import GuestControl, GuestControlError, GuestHooks
from livemig.sender.migration import FINAL_STATES, Migration, MigrationRequest
from livemig.sender.placement import place_request_regions

log = logging.getLogger("livemig.sender")

MAX_CONNECTIONS = 128
MIN_BATCH_BYTES = 64 << 10
MAX_BATCH_BYTES = 64 << 20
WATCH_INTERVAL_SECONDS = 0.25
DEFAULT_DOWNTIME_MS = 300  # Cloud Hypervisor's default
DEFAULT_MAX_ITERATIONS = 30


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
    with_logs = sum(1 for r in request.regions if r.dirty_log)
    if with_logs not in (0, len(request.regions)):
        raise RequestError(invalid, "give a dirty_log for every region (live migration) or for none")
    if request.available_bandwidth_bytes_per_second < 0 or request.guest_pid < 0:
        raise RequestError(invalid, "available_bandwidth_bytes_per_second and guest_pid must not be negative")
    return MigrationRequest(
        destination=request.destination.strip(),
        connections=connections,
        skip_zero_pages=request.skip_zero_pages,
        page_size=page_size,
        verify=request.verify,
        max_batch_bytes=max_batch,
        downtime_ms=request.downtime_ms or DEFAULT_DOWNTIME_MS,
        timeout_ms=request.timeout_ms,
        force_on_timeout=request.timeout_strategy == pb.TIMEOUT_STRATEGY_FORCE,
        max_iterations=request.max_iterations or DEFAULT_MAX_ITERATIONS,
        available_bandwidth=request.available_bandwidth_bytes_per_second,
    )


FINISHED_MIGRATIONS_KEPT = 1024


class MigrationRegistry:
    """Migrations by id: all running ones, and the latest finished ones for GetMigration
    and ListMigrations (bounded, so a long-lived sender does not grow without end)."""

    def __init__(self, keep_finished: int = FINISHED_MIGRATIONS_KEPT) -> None:
        self._migrations: dict[str, Migration] = {}
        self._keep_finished = keep_finished
        self._lock = threading.Lock()

    def add(self, migration: Migration) -> None:
        with self._lock:
            self._migrations[migration.migration_id] = migration
            finished = [key for key, m in self._migrations.items() if m.finished]
            for key in finished[: max(0, len(finished) - self._keep_finished)]:
                del self._migrations[key]  # insertion order: the oldest go first

    def get(self, migration_id: str) -> Migration | None:
        with self._lock:
            return self._migrations.get(migration_id)

    def all(self) -> list[Migration]:
        with self._lock:
            return list(self._migrations.values())


class SenderService(pb_grpc.SenderServicer):
    def __init__(
        self, registry: MigrationRegistry, hooks: GuestHooks | None = None, security: Security = INSECURE
    ) -> None:
        self.registry = registry
        self.hooks = hooks or GuestHooks()
        self.security = security  # for the sender's own channels to receivers

    def StartMigration(self, request: pb.StartMigrationRequest, context: grpc.ServicerContext):
        migration_id = uuid.uuid4().hex
        layout = dirty_log = None
        try:
            migration_request = validate_request(request)
            regions = place_request_regions(request.regions)  # sorted by gpa
            layout = open_source_layout([(r.gpa, r.path) for r in regions], migration_request.page_size)
            if regions[0].dirty_log:
                dirty_log = DirtyLog(layout, [r.dirty_log for r in regions])
            guest = GuestControl(migration_id, request.guest_pid, self.hooks)
            guest.check()
        except RequestError as error:
            _close(layout, dirty_log)
            context.abort(error.code, error.message)
        except FileNotFoundError as error:
            _close(layout, dirty_log)
            context.abort(grpc.StatusCode.NOT_FOUND, f"file not found: {error.filename}")
        except PermissionError as error:
            _close(layout, dirty_log)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"cannot open: {error.filename}")
        except GuestControlError as error:
            _close(layout, dirty_log)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        except (LayoutError, ValueError, OSError) as error:
            _close(layout, dirty_log)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        migration = Migration(migration_request, layout, guest, dirty_log, migration_id, self.security)
        self.registry.add(migration)
        log.info(
            "migration %s: %d bytes in %d regions to %s (connections=%d skip_zero_pages=%s verify=%s live=%s)",
            migration.migration_id,
            layout.total_bytes,
            len(layout.regions),
            migration_request.destination,
            migration_request.connections,
            migration_request.skip_zero_pages,
            migration_request.verify,
            migration.live,
            extra={"migration_id": migration.migration_id},
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
        """A status on every state, phase or iteration change, and every 250 ms between."""
        migration = self._find(request, context)
        while context.is_active():
            key = migration.progress_key()
            status = migration.status()
            yield status
            if status.state in FINAL_STATES:
                return
            migration.wait_for_change(key, WATCH_INTERVAL_SECONDS)

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


def _close(layout, dirty_log) -> None:
    if dirty_log is not None:
        dirty_log.close()
    if layout is not None:
        layout.close()
