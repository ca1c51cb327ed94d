"""gRPC plumbing both services share: message limits, server set-up, graceful stop.

Policy stays out of here: this module knows channels and servers, not migrations.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from livemig.common.wire import HEADER_ALLOWANCE

log = logging.getLogger("livemig.transport")

# Payload per batch. Per-message work (gRPC's and ours, both ends) is a fixed cost:
# on 2 cores, 8 MiB batches cost ~0.4 CPU s per GiB less than 4 MiB over both
# services (docs/benchmarks.md). Above 32 MiB a block no longer comes from the heap
# (common/allocator.py), so larger is not better.
DEFAULT_MAX_BATCH_BYTES = 8 << 20
KEEPALIVE_SECONDS = 5
CONNECT_TIMEOUT_SECONDS = 5
SHUTDOWN_GRACE_SECONDS = 10.0


def message_limit(max_batch_bytes: int) -> int:
    """gRPC message size bound for batches of max_batch_bytes payload (both ends use it)."""
    return max_batch_bytes + HEADER_ALLOWANCE


def channel_options(max_batch_bytes: int, connection_index: int | None = None) -> list[tuple[str, object]]:
    """Options for a channel; a distinct connection_index forces a TCP connection of its own.

    gRPC shares one subchannel between channels with equal arguments, which
    would fold N "connections" into one socket.
    """
    limit = message_limit(max_batch_bytes)
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # A dead peer or a cut link is noticed within keepalive time + timeout (~10 s).
        ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_SECONDS * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after a broken connection (gRPC waits 1 s, then up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # gRPC's "minimum connect timeout": how long one connection attempt may take
        # until the server's HTTP/2 SETTINGS arrive (default 20 s). At 1 s, a 1 GiB
        # migration over 128 connections on 2 busy cores failed: handshakes with the
        # receiver's data workers timed out, and calls on a channel waiting to retry
        # fail at once, which spent every reconnect of a connection within 2 s.
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_SECONDS * 1000),
    ]
    if connection_index is not None:
        options.append(("grpc.use_local_subchannel_pool", 1))
        options.append(("livemig.connection_index", connection_index))
    return options


class ServiceHost:
    """A gRPC server with health checking, reflection and a SIGTERM drain."""

    def __init__(
        self,
        service_names: list[str],
        max_workers: int,
        max_message_bytes: int,
        maximum_concurrent_rpcs: int | None = None,
    ) -> None:
        # maximum_concurrent_rpcs: calls beyond it are refused at once with
        # RESOURCE_EXHAUSTED instead of waiting for a thread.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_SECONDS * 1000 - 1000),
                ("grpc.http2.max_ping_strikes", 0),
                # The server pings too, so streams of a dead client end and its session can expire.
                ("grpc.keepalive_time_ms", KEEPALIVE_SECONDS * 1000),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_SECONDS * 1000),
                ("grpc.so_reuseport", 0),
            ],
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = service_names
        reflection.enable_server_reflection(
            [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self.port = 0

    def start(self, listen: str, credentials: grpc.ServerCredentials | None = None) -> int:
        if credentials is None:
            self.port = self.server.add_insecure_port(listen)
        else:
            self.port = self.server.add_secure_port(listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        self.server.start()
        for name in ["", *self.service_names]:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def stop(self, grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Report NOT_SERVING first so balancers stop sending, then drain."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def serve_until_signalled(self, on_stop: Callable[[], None] | None = None) -> None:
        signalled: list[int] = []

        def request_stop(signum: int, _frame: object) -> None:
            # Only record it: the handler runs in the main thread between bytecodes,
            # where taking a lock the main thread may hold could deadlock.
            signalled.append(signum)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        # Sleep in short slices: the kernel may deliver the signal to a gRPC thread,
        # and the Python handler only runs once the main thread wakes up.
        while not signalled:
            time.sleep(0.1)
        log.info("signal %d: draining", signalled[0])
        if on_stop is not None:
            on_stop()
        self.stop()
