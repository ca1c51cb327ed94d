"""Sender process: the control API server."""

from __future__ import annotations

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE, Security
from livemig.common.transport import ServiceHost
from livemig.common.worker_processes import start_fork_server
from livemig.sender.config import SenderConfig
from livemig.sender.connection_pool import default_pool
from livemig.sender.connection_process import PRELOAD as CONNECTION_PRELOAD
from livemig.sender.registry import MigrationRegistry
from livemig.sender.service import SenderService

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Sender"].full_name
# Each WatchMigration holds a thread while it streams; watches are bounded below
# this (SenderConfig.max_watch_streams), so the rest always serve other calls.
CONTROL_WORKERS = 32
RESERVED_WORKERS = 8  # never taken by watch streams


def build_sender(
    config: SenderConfig | None = None, security: Security = INSECURE
) -> tuple[ServiceHost, MigrationRegistry]:
    config = config or SenderConfig()
    if config.max_watch_streams > CONTROL_WORKERS - RESERVED_WORKERS:
        raise ValueError(
            f"at most {CONTROL_WORKERS - RESERVED_WORKERS} watch streams: "
            f"{RESERVED_WORKERS} of the {CONTROL_WORKERS} control threads stay free for other calls"
        )
    registry = MigrationRegistry()
    start_fork_server(CONNECTION_PRELOAD)  # connection processes fork from it in milliseconds
    default_pool(config.keep_buffers_seconds)  # and are kept between migrations
    host = ServiceHost([SERVICE_NAME], max_workers=CONTROL_WORKERS, max_message_bytes=16 << 20)
    pb_grpc.add_SenderServicer_to_server(SenderService(registry, config, security), host.server)
    return host, registry


def cancel_all(registry: MigrationRegistry) -> None:
    """On shutdown: running migrations end CANCELLED (their receiver sessions aborted)."""
    for migration in registry.all():
        migration.cancel()
    for migration in registry.all():
        migration.join(timeout=30)
    default_pool().close()  # idle connection processes end with the sender
