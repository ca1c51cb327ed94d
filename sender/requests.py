"""Validation of every client-supplied value of the sender's control API, at the door.

One table of rules per request message. A rule names the field it guards, says
what the value must be and carries the reason of its refusal (mapped to a gRPC
status by the servicer). The tables run before anything is opened, created or
signalled: a refused request has touched nothing on the host.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from livemig.common.migration_ids import MIGRATION_ID_RULE, is_migration_id
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MAX_PAGE_SIZE, MIN_PAGE_SIZE, effective_page_size
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.sender.config import SenderConfig
from livemig.sender.defaults import DEFAULT_DOWNTIME_MS, DEFAULT_MAX_ITERATIONS
from livemig.sender.dirty_log import dirty_log_path
from livemig.sender.errors import Reason, SenderError
from livemig.sender.migration import MigrationRequest

MAX_CONNECTIONS = 128
MIN_BATCH_BYTES = 64 << 10
MAX_BATCH_BYTES = 64 << 20
MAX_REGIONS = 1024
MAX_PATH_BYTES = 4096
MAX_QMP_NAME_BYTES = 255
MAX_DESTINATION_CHARS = 255
MAX_DOWNTIME_MS = 3_600_000  # an hour
MAX_TIMEOUT_MS = 7 * 24 * 3_600_000  # a week
MAX_ITERATIONS = 100_000  # as the CLI allows; each iteration keeps a small record
MIN_BANDWIDTH = 1e3  # bytes/s; below, every estimate is "never" anyway
MAX_BANDWIDTH = 1e13  # 10 TB/s, beyond any link

_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$")
_STRATEGIES = frozenset(pb.TimeoutStrategy.values())
_COMPRESSIONS = frozenset(pb.Compression.values())


@dataclass(frozen=True, slots=True)
class Rule:
    """One field's requirement. `holds(message, config)` sees the whole message, so a
    rule may relate fields (a dirty map to its region)."""

    field: str
    requirement: str
    holds: Callable[[Any, SenderConfig], bool]
    reason: Reason = Reason.INVALID


def host_port(text: str) -> bool:
    """A TCP "host:port": no gRPC target schemes (unix:, ...) that would name host objects."""
    match = _HOST_PORT.fullmatch(text)
    return match is not None and 1 <= int(match.group(1)) <= 65535 and len(text) <= MAX_DESTINATION_CHARS


def path_text(text: str) -> bool:
    """A path a client may send: bounded, printable, no NUL."""
    return 0 < len(text.encode()) <= MAX_PATH_BYTES and text.isprintable()


def page_size_ok(value: int) -> bool:
    try:
        effective_page_size(value)
    except ValueError:
        return False
    return True


def guest_pid_ok(pid: int) -> bool:
    """0 (none), or a pid that can be a guest: never init, the sender or its parent."""
    return pid == 0 or (pid > 1 and pid not in (os.getpid(), os.getppid()))


def qmp_socket_name(name: str) -> bool:
    """A QMP socket's name under the sender's --qmp-dir: relative, normalised, no "..",
    printable, bounded (the resolved socket is checked again in sender/qmp_guest.py)."""
    if not name:
        return True
    if len(name.encode()) > MAX_QMP_NAME_BYTES or not name.isprintable() or name.startswith("/"):
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts)


def bandwidth_ok(value: float) -> bool:
    return value == 0 or (math.isfinite(value) and MIN_BANDWIDTH <= value <= MAX_BANDWIDTH)


def dirty_log_ok(region: pb.GuestMemoryRegion, config: SenderConfig) -> bool:
    """A dirty map is only ever the one the sender derives from its region: never a free
    path (the sender maps it read-write and clears it)."""
    if not region.dirty_log:
        return True
    derived = dirty_log_path(region.path, config.dirty_log_dir)
    return path_text(region.dirty_log) and os.path.normpath(region.dirty_log) == os.path.normpath(derived)


def _maps_distinct(request: pb.StartMigrationRequest, config: SenderConfig) -> bool:
    maps = [os.path.normpath(r.dirty_log) for r in request.regions if r.dirty_log]
    return len(set(maps)) == len(maps)


START_MIGRATION_RULES: tuple[Rule, ...] = (
    Rule("destination", "must be a receiver's host:port", lambda r, c: host_port(r.destination)),
    Rule(
        "regions",
        f"must name between 1 and {MAX_REGIONS} guest memory regions",
        lambda r, c: 1 <= len(r.regions) <= MAX_REGIONS,
    ),
    Rule(
        "connections",
        f"must be between 1 and {MAX_CONNECTIONS} (0 means 1)",
        lambda r, c: r.connections <= MAX_CONNECTIONS,
    ),
    Rule(
        "page_size",
        f"(the page size) must be a power of two between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE} (0 means 4096)",
        lambda r, c: page_size_ok(r.page_size),
    ),
    Rule(
        "max_batch_bytes",
        f"must be between {MIN_BATCH_BYTES} and {MAX_BATCH_BYTES} (0: the default)",
        lambda r, c: r.max_batch_bytes == 0 or MIN_BATCH_BYTES <= r.max_batch_bytes <= MAX_BATCH_BYTES,
    ),
    Rule("downtime_ms", f"must be at most {MAX_DOWNTIME_MS}", lambda r, c: r.downtime_ms <= MAX_DOWNTIME_MS),
    Rule("timeout_ms", f"must be at most {MAX_TIMEOUT_MS}", lambda r, c: r.timeout_ms <= MAX_TIMEOUT_MS),
    Rule(
        "timeout_strategy",
        "must be TIMEOUT_STRATEGY_CANCEL or TIMEOUT_STRATEGY_FORCE",
        lambda r, c: r.timeout_strategy in _STRATEGIES,
    ),
    Rule(
        "compression",
        "must be COMPRESSION_NONE, COMPRESSION_ZSTD or COMPRESSION_LZ4",
        lambda r, c: r.compression in _COMPRESSIONS,
    ),
    Rule("max_iterations", f"must be at most {MAX_ITERATIONS}", lambda r, c: r.max_iterations <= MAX_ITERATIONS),
    Rule(
        "stall_timeout_ms",
        f"must be at most {MAX_TIMEOUT_MS}",
        lambda r, c: r.stall_timeout_ms <= MAX_TIMEOUT_MS,
    ),
    Rule(
        "guest_pid",
        "must be 0 or the pid of the guest (never 1, the sender or its parent)",
        lambda r, c: guest_pid_ok(r.guest_pid),
    ),
    Rule(
        "qmp_socket",
        "must be the name of a socket under the sender's --qmp-dir: relative, without '.' or '..' parts, "
        f"printable, at most {MAX_QMP_NAME_BYTES} bytes",
        lambda r, c: qmp_socket_name(r.qmp_socket),
    ),
    Rule(
        "qmp_socket",
        "and guest_pid name two ways to pause the guest: give one",
        lambda r, c: not (r.qmp_socket and r.guest_pid),
    ),
    Rule(
        "qmp_socket",
        "needs a sender started with --qmp-dir (QMP guest control is off)",
        lambda r, c: not r.qmp_socket or c.qmp_dir is not None,
        Reason.GUEST,
    ),
    Rule(
        "max_bandwidth_bytes_per_second",
        f"must be 0 (the sender's default) or a finite number between {MIN_BANDWIDTH:g} and {MAX_BANDWIDTH:g}",
        lambda r, c: bandwidth_ok(r.max_bandwidth_bytes_per_second),
    ),
    Rule(
        "available_bandwidth_bytes_per_second",
        f"must be 0 (measured) or a finite number between {MIN_BANDWIDTH:g} and {MAX_BANDWIDTH:g}",
        lambda r, c: bandwidth_ok(r.available_bandwidth_bytes_per_second),
    ),
    Rule(
        "regions.dirty_log",
        "must be given for every region (live migration) or for none",
        lambda r, c: sum(1 for x in r.regions if x.dirty_log) in (0, len(r.regions)),
    ),
    Rule("regions.dirty_log", "must name a different map for every region", _maps_distinct),
)

REGION_RULES: tuple[Rule, ...] = (
    Rule(
        "path",
        f"must be a printable path of at most {MAX_PATH_BYTES} bytes",
        lambda g, c: path_text(g.path),
    ),
    Rule(
        "dirty_log",
        "must be empty or the region's own map: <region path>.dirty, "
        "or <--dirty-log-dir>/<region file name>.dirty when the sender sets one",
        dirty_log_ok,
    ),
)

LIMITS_RULES: tuple[Rule, ...] = (
    Rule(
        "downtime_ms",
        f"must be between 1 and {MAX_DOWNTIME_MS}",
        lambda m, c: not m.HasField("downtime_ms") or 1 <= m.downtime_ms <= MAX_DOWNTIME_MS,
    ),
    Rule(
        "max_bandwidth_bytes_per_second",
        f"must be 0 (no cap) or a finite number between {MIN_BANDWIDTH:g} and {MAX_BANDWIDTH:g}",
        lambda m, c: not m.HasField("max_bandwidth_bytes_per_second") or bandwidth_ok(m.max_bandwidth_bytes_per_second),
    ),
    Rule(
        "max_iterations",
        f"must be between 1 and {MAX_ITERATIONS}",
        lambda m, c: not m.HasField("max_iterations") or 1 <= m.max_iterations <= MAX_ITERATIONS,
    ),
)

MIGRATION_ID_RULES: tuple[Rule, ...] = (
    Rule("migration_id", "is required", lambda m, c: bool(m.migration_id)),
    Rule(
        "migration_id",
        f"must be {MIGRATION_ID_RULE}",
        lambda m, c: is_migration_id(m.migration_id),
    ),
)


def check(message: Any, rules: Sequence[Rule], config: SenderConfig, prefix: str = "") -> None:
    """Raise SenderError for the first rule the message breaks."""
    for rule in rules:
        if not rule.holds(message, config):
            name = rule.field.rsplit(".", 1)[-1]
            value = getattr(message, name, None)
            shown = "" if value is None or isinstance(value, bytes | list) else f", got {_shown(value)}"
            raise SenderError(rule.reason, f"{prefix}{rule.field} {rule.requirement}{shown}")


def _shown(value: object) -> str:
    """A refused value, bounded (it goes back to the client and into no log unescaped)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_start(request: pb.StartMigrationRequest, config: SenderConfig) -> MigrationRequest:
    """Check every field of a StartMigration request and apply the API's defaults."""
    check(request, START_MIGRATION_RULES, config)
    for index, region in enumerate(request.regions):
        check(region, REGION_RULES, config, prefix=f"regions[{index}].")
    return MigrationRequest(
        destination=request.destination,
        connections=request.connections or 1,
        skip_zero_pages=request.skip_zero_pages,
        page_size=effective_page_size(request.page_size),
        verify=request.verify,
        max_batch_bytes=request.max_batch_bytes or DEFAULT_MAX_BATCH_BYTES,
        downtime_ms=request.downtime_ms or DEFAULT_DOWNTIME_MS,
        timeout_ms=request.timeout_ms,
        force_on_timeout=request.timeout_strategy == pb.TIMEOUT_STRATEGY_FORCE,
        max_iterations=request.max_iterations or DEFAULT_MAX_ITERATIONS,
        available_bandwidth=request.available_bandwidth_bytes_per_second,
        auto_converge=request.auto_converge,
        stall_timeout_ms=request.stall_timeout_ms,
        max_bandwidth=request.max_bandwidth_bytes_per_second or config.max_bandwidth,
        compression=request.compression,
    )


def validate_migration_id(request: pb.MigrationRequest, config: SenderConfig) -> str:
    check(request, MIGRATION_ID_RULES, config)
    return request.migration_id


def validate_limits(request: pb.MigrationLimits, config: SenderConfig) -> tuple[str, dict[str, float | int]]:
    """The migration id and the limits a SetMigrationLimits call changes (unset: unchanged)."""
    check(request, MIGRATION_ID_RULES, config)
    check(request, LIMITS_RULES, config)
    names = ("downtime_ms", "max_bandwidth_bytes_per_second", "max_iterations")
    changes = {name: getattr(request, name) for name in names if request.HasField(name)}
    if not changes:
        raise SenderError(
            Reason.INVALID, "no limit given: set downtime_ms, max_bandwidth_bytes_per_second or max_iterations"
        )
    if "max_bandwidth_bytes_per_second" in changes:
        changes["max_bandwidth"] = changes.pop("max_bandwidth_bytes_per_second")
    return request.migration_id, changes
