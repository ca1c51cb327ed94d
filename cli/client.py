"""Client side of the Sender API: start, follow, list, inspect and cancel migrations.

Exit codes of the commands that talk to a sender (documented in the README):
0 the migration COMPLETED (or the command did what it was asked), 1 it ended
FAILED or CANCELLED, 2 usage (bad options, or a request the sender refused),
3 the sender cannot be reached, 130 interrupted by Ctrl-C (the migration was
cancelled first).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE, Security

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
START_TIMEOUT_SECONDS = 30
CANCEL_TIMEOUT_SECONDS = 40  # the sender waits up to 30 s for the migration to wind down
UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


@dataclass(frozen=True, slots=True)
class MemoryArg:
    path: str
    gpa: int | None


def parse_memory_arg(text: str) -> MemoryArg:
    """FILE[@GPA], GPA in decimal or 0x-hex."""
    path, sep, gpa = text.rpartition("@")
    if not sep:
        return MemoryArg(text, None)
    try:
        value = int(gpa, 0)
    except ValueError as error:
        raise ValueError(f"bad guest-physical address in {text!r}") from error
    if value < 0 or value >= 1 << 64 or not path:
        raise ValueError(f"bad guest-physical address in {text!r}")
    return MemoryArg(path, value)


def request_regions(memory: list[MemoryArg], dirty_log: bool) -> list[pb.GuestMemoryRegion]:
    """Paths only: a region without @GPA is placed by the sender, which sees the files."""
    regions = []
    for arg in memory:
        region = pb.GuestMemoryRegion(path=arg.path, dirty_log=arg.path + ".dirty" if dirty_log else "")
        if arg.gpa is not None:
            region.gpa = arg.gpa
        regions.append(region)
    return regions


class PidFileMissing(Exception):
    pass


def read_pid_file(path: str, wait_seconds: float = 60.0) -> int:
    """The pid a guest wrote (memtouch --pid-file); waits for the file to appear."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            pid = int(Path(path).read_text().strip())
            if pid > 0:
                return pid
        except (FileNotFoundError, ValueError):
            pass
        except OSError as error:
            raise PidFileMissing(f"cannot read {path}: {error.strerror}") from None
        if time.monotonic() >= deadline:
            raise PidFileMissing(f"no process id in {path} after {wait_seconds:g} s")
        time.sleep(0.2)


def start_migration(stub: pb_grpc.SenderStub, request: pb.StartMigrationRequest) -> str:
    return stub.StartMigration(request, timeout=START_TIMEOUT_SECONDS).migration_id


def follow(
    stub: pb_grpc.SenderStub, migration_id: str, on_update: Callable[[pb.MigrationStatus], None] | None = None
) -> pb.MigrationStatus:
    """WatchMigration until a final state; the last status."""
    status = pb.MigrationStatus(migration_id=migration_id)
    for status in stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id)):
        if on_update is not None:
            on_update(status)
    return status


def cancel(stub: pb_grpc.SenderStub, migration_id: str) -> pb.MigrationStatus:
    return stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=CANCEL_TIMEOUT_SECONDS)


def run_migration(
    sender: str,
    request: pb.StartMigrationRequest,
    on_update: Callable[[pb.MigrationStatus], None] | None = None,
    security: Security = INSECURE,
) -> pb.MigrationStatus:
    """StartMigration, then WatchMigration until a final state. Raises grpc.RpcError."""
    with security.channel(sender) as channel:
        stub = pb_grpc.SenderStub(channel)
        return follow(stub, start_migration(stub, request), on_update)


def exit_code(status: pb.MigrationStatus) -> int:
    return EXIT_COMPLETED if status.state == pb.COMPLETED else EXIT_FAILED


def rpc_error_line(error: grpc.RpcError, sender: str) -> tuple[str, int]:
    """One line and an exit code for a failed call to the sender (gRPC's details can span
    a dozen lines for a TLS handshake failure: the first line says what happened)."""
    code = error.code()
    details = (error.details() or "").strip().splitlines()
    first = details[0] if details else ""
    if code in UNREACHABLE_CODES:
        return f"error: cannot reach the sender at {sender}: {code.name}: {first}", EXIT_UNREACHABLE
    return f"error: {code.name}: {first}", EXIT_USAGE if code != grpc.StatusCode.UNKNOWN else EXIT_FAILED


def status_to_json(status: pb.MigrationStatus) -> str:
    return json_format.MessageToJson(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None
    )
