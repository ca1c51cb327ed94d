"""Client side of the Sender API: start a migration and follow it to its end."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE, Security


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
        return MemoryArg(path, int(gpa, 0))
    except ValueError as error:
        raise ValueError(f"bad guest-physical address in {text!r}") from error


def place_regions(memory: Sequence[MemoryArg], sizes: Sequence[int]) -> list[pb.GuestMemoryRegion]:
    """Regions without @GPA follow the previous region (the first starts at 0)."""
    regions = []
    next_gpa = 0
    for arg, size in zip(memory, sizes, strict=True):
        gpa = next_gpa if arg.gpa is None else arg.gpa
        regions.append(pb.GuestMemoryRegion(gpa=gpa, path=arg.path))
        next_gpa = gpa + size
    return regions


def read_pid_file(path: str, wait_seconds: float = 60.0) -> int:
    """The pid a guest wrote (memtouch --pid-file); waits for the file to appear."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return int(Path(path).read_text().strip())
        except (FileNotFoundError, ValueError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def run_migration(
    sender: str,
    request: pb.StartMigrationRequest,
    on_update: Callable[[pb.MigrationStatus], None] | None = None,
    security: Security = INSECURE,
) -> pb.MigrationStatus:
    """StartMigration, then WatchMigration until a final state. Raises grpc.RpcError."""
    with security.channel(sender) as channel:
        stub = pb_grpc.SenderStub(channel)
        migration_id = stub.StartMigration(request, timeout=30).migration_id
        status = pb.MigrationStatus(migration_id=migration_id)
        for status in stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id)):
            if on_update is not None:
                on_update(status)
        return status


def status_to_json(status: pb.MigrationStatus) -> str:
    return json_format.MessageToJson(
        status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=None
    )
