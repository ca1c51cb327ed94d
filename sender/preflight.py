"""A preflight (`CheckMigration`, `send-migration --check`): everything a StartMigration
of the same request would need, checked without pausing the guest or sending a page.

It goes through the very code a start goes through, so it cannot pass where a start
would fail for these reasons: the rule tables, opening the files and dirty maps, the
guest (pid, hooks, QMP), one migration per guest, and the receiver, which prepares a
session of the same layout (TLS, its limits, its free space) that is aborted at once.
Problems are collected, one sentence each, rather than stopping at the first, so an
operator fixes them in one round. Then the memory is scanned for zero pages (holes are
not read) to forecast what would be sent, and how long it would take at the
request's available bandwidth: nothing is sent, so no bandwidth is measured.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import Security
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES, channel_options
from livemig.common.wire import to_pb_ranges
from livemig.common.zeropages import scan_guest_range
from livemig.sender.claims import GuestClaims, migration_holdings
from livemig.sender.config import SenderConfig
from livemig.sender.errors import SenderError
from livemig.sender.failures import describe_failure
from livemig.sender.migration import CONTROL_TIMEOUT_SECONDS
from livemig.sender.requests import validate_start
from livemig.sender.resources import MigrationResources, acquire

SCAN_CHUNK_BYTES = 8 << 20
PREFLIGHT_ID = "preflight"


def check_migration(
    request: pb.StartMigrationRequest, config: SenderConfig, security: Security, claims: GuestClaims
) -> pb.MigrationCheck:
    result = pb.MigrationCheck()
    try:
        validated = validate_start(request, config)
    except SenderError as error:
        result.problems.append(error.message)
        return result  # nothing else can be judged from a request the door refuses
    for command in (config.hooks.pause_command, config.hooks.resume_command, config.hooks.throttle_command):
        if command and not request.guest_pid and not request.qmp_socket and not _runnable(command):
            result.problems.append(f"the sender's hook {command!r} names no program it can run")
    try:
        resources = acquire(PREFLIGHT_ID, request, validated.page_size, config)
    except SenderError as error:
        result.problems.append(error.message)
        resources = None
    try:
        if resources is not None:
            result.total_bytes = resources.layout.total_bytes
            conflict = claims.conflict(*migration_holdings(resources))
            if conflict:
                result.problems.append(conflict)
        _check_receiver(request, validated.page_size, resources, security, result)
        if resources is not None:
            _forecast(resources, validated.page_size, request, result)
    finally:
        if resources is not None:
            resources.release()
            resources.guest.close()
    return result


def _runnable(command: str) -> bool:
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    return bool(words) and shutil.which(words[0]) is not None


def _check_receiver(
    request: pb.StartMigrationRequest,
    page_size: int,
    resources: MigrationResources | None,
    security: Security,
    result: pb.MigrationCheck,
) -> None:
    """Reach the receiver (TLS included) through its health service; with the layout known,
    prepare a session like the migration's (its limits, its free space), then abort it."""
    with security.channel(request.destination) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=CONTROL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            result.problems.append(describe_failure(error, request.destination))
            return
    if resources is None:
        return  # without the layout there is no session to try
    with security.channel(
        request.destination, channel_options(request.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES)
    ) as channel:
        receiver = pb_grpc.ReceiverStub(channel)
        try:
            prepared = receiver.PrepareMigration(
                pb.PrepareMigrationRequest(
                    layout=pb.MemoryRangeTable(ranges=to_pb_ranges(resources.layout.table.ranges)),
                    page_size=page_size,
                    migration_id=PREFLIGHT_ID,
                    connections=request.connections or 1,
                ),
                timeout=CONTROL_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            result.problems.append(describe_failure(error, request.destination))
            return
        result.receiver_max_batch_bytes = prepared.max_batch_bytes
        result.receiver_data_ports = len(prepared.data_ports)
        with contextlib.suppress(grpc.RpcError):  # the session expires on its own
            receiver.AbortMigration(
                pb.AbortMigrationRequest(session_token=prepared.session_token, reason="preflight"),
                timeout=CONTROL_TIMEOUT_SECONDS,
            )


def _forecast(
    resources: MigrationResources, page_size: int, request: pb.StartMigrationRequest, result: pb.MigrationCheck
) -> None:
    layout = resources.layout
    buffer = memoryview(bytearray(SCAN_CHUNK_BYTES))
    zero = 0
    for region in layout.regions:
        for offset in range(0, region.length, SCAN_CHUNK_BYTES):
            length = min(SCAN_CHUNK_BYTES, region.length - offset)
            zero += scan_guest_range(layout, region.gpa + offset, buffer[:length], page_size).zero_bytes
    result.zero_bytes = zero
    result.send_bytes = layout.total_bytes - zero if request.skip_zero_pages else layout.total_bytes
    bandwidth = request.available_bandwidth_bytes_per_second
    if bandwidth > 0:
        result.bandwidth_bytes_per_second = bandwidth
        result.bandwidth_source = "available"
        result.forecast_ms = int(result.send_bytes / bandwidth * 1000)
