"""Receiver: the control process's gRPC server and its pool of data-worker processes.

Who owns what (docs/architecture.md has the whole table): the control process
owns sessions (creation, limits, state, ledger, completion, expiry), the
destination files' creation and removal, and every Prometheus series; data
workers own their page streams and the writes into destination memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from grpc_health.v1 import health_pb2

from livemig.common.fd_limit import raise_open_file_limit
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE, Security
from livemig.common.transfer_rpc import RECEIVER_SERVICE
from livemig.common.transport import ServiceHost, message_limit
from livemig.common.worker_processes import start_fork_server, usable_cores
from livemig.receiver import metrics
from livemig.receiver.data_worker import PRELOAD, WorkerSpec
from livemig.receiver.data_worker_pool import DataWorkerPool
from livemig.receiver.limits import ReceiverLimits
from livemig.receiver.orphans import allocated_bytes, remove_orphans
from livemig.receiver.registry import SessionRegistry
from livemig.receiver.service import ReceiverService
from livemig.receiver.write_mode import usable_write_mode

log = logging.getLogger("livemig.receiver")
SERVICE_NAME = RECEIVER_SERVICE
CONTROL_WORKERS = 32  # unary control calls only: page streams go to the data workers


class Receiver:
    """The running receiver: control server, registry and data workers."""

    def __init__(
        self,
        memory_dir: Path,
        limits: ReceiverLimits | None = None,
        security: Security = INSECURE,
        bind_host: str = "127.0.0.1",
        data_port: int = 0,
    ) -> None:
        self.limits = limits or ReceiverLimits()
        raise_open_file_limit()  # before the fork server starts: its workers inherit it
        memory_dir.mkdir(parents=True, exist_ok=True)
        remove_orphans(memory_dir)  # what a receiver that died left half-written
        metrics.ALLOCATED_BYTES.set_function(lambda: allocated_bytes(memory_dir))
        self.registry = SessionRegistry(memory_dir, self.limits)
        start_fork_server(PRELOAD)
        workers = self.limits.data_workers or usable_cores()
        self.registry.write_mode = usable_write_mode(self.limits.write_mode)
        self.registry.data_workers = workers
        specs = [
            WorkerSpec(
                index=index,
                host=bind_host,
                port=data_port + index if data_port else 0,
                security=security,
                records_dir=self.registry.records_dir,
                max_streams=self.limits.max_streams_per_worker,
                max_message_bytes=message_limit(self.limits.max_batch_bytes),
                log_level=logging.getLogger().getEffectiveLevel(),
                unbound_stream_seconds=self.limits.idle_timeout_seconds,
                keep_buffers_seconds=self.limits.keep_buffers_seconds,
            )
            for index in range(workers)
        ]
        self.host: ServiceHost | None = None
        self.workers = DataWorkerPool(specs, self.registry, on_serving=self._data_plane_serving)
        self.registry.data_plane = self.workers
        self.host = ServiceHost(
            [SERVICE_NAME],
            max_workers=CONTROL_WORKERS,
            max_message_bytes=message_limit(self.limits.max_batch_bytes),
            maximum_concurrent_rpcs=CONTROL_WORKERS * 4,
        )
        pb_grpc.add_ReceiverServicer_to_server(ReceiverService(self.registry, self.workers), self.host.server)

    def _data_plane_serving(self, serving: bool) -> None:
        """Health follows the data plane: a receiver none of whose workers listens cannot
        take a migration (balancers and orchestrators look here). Before the server
        starts, ServiceHost.start says SERVING itself (every worker listens by then)."""
        host = self.host
        if host is None or not host.port:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *host.service_names]:
            host.health.set(name, status)  # ignored once a graceful shutdown began

    def shut_down(self, reason: str = "receiver shutting down") -> None:
        """Abort unfinished sessions, stop the workers, remove the private state folder."""
        self.registry.abort_all(reason)
        self.registry.close()
        self.workers.stop(grace=2.0)
        self.registry.remove_state()
