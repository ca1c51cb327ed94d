"""Prometheus metrics of the sender (one process, default registry).

Counters are totals over all migrations. Per-migration gauges (phase, remaining
bytes, dirty rate, expected downtime: QEMU's `info migrate` figures) carry a
`migration_id` label and are removed when the migration ends, so nothing stays
stale and their number is bounded by the running migrations. The migration's
own process is the one owner of these updates: it calls the functions below.
"""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge, Histogram

from livemig.common import build_info  # noqa: F401  (disables _created series; livemig_build_info)

PHASES = ("setup", "precopy", "switchover", "completing")

SCANNED_BYTES = Counter("livemig_sender_scanned_bytes", "Guest memory bytes inspected for zero pages")
ZERO_BYTES = Counter("livemig_sender_zero_bytes", "Bytes found all-zero and skipped (not transmitted)")
ZERO_PAGES = Counter("livemig_sender_zero_pages", "Pages found all-zero and skipped")
NORMAL_PAGES = Counter("livemig_sender_normal_pages", "Pages transmitted with their contents")
TRANSMITTED_BYTES = Counter("livemig_sender_transmitted_bytes", "Page payload bytes transmitted")
WIRE_BYTES = Counter("livemig_sender_wire_bytes", "Bytes written to page streams, payload and framing")
BATCHES = Counter("livemig_sender_batches", "Page batches sent")
COMPRESSED_RAW_BYTES = Counter(
    "livemig_sender_compressed_raw_bytes",
    "Page payload bytes of batches sent compressed (raw size; also in transmitted_bytes)",
)
COMPRESSED_BYTES = Counter(
    "livemig_sender_compressed_bytes",
    "What the payload of batches sent compressed took compressed (ratio: compressed_raw_bytes over this)",
)
MIGRATIONS_STARTED = Counter("livemig_sender_migrations_started", "Migrations accepted by StartMigration")
MIGRATIONS = Counter("livemig_sender_migrations", "Migrations by final state", ["outcome"])
for _outcome in ("completed", "failed", "cancelled"):
    MIGRATIONS.labels(_outcome)  # export zeros, so rate() and increase() see every outcome from the start
CONNECTION_WIRE_BYTES = Counter(
    "livemig_sender_connection_wire_bytes",
    "Bytes written to page streams, by connection index (0..127, bounded by the connection limit)",
    ["connection"],
)
ACTIVE_MIGRATIONS = Gauge("livemig_sender_active_migrations", "Migrations pending or running")
CONNECTIONS_IN_USE = Gauge(
    "livemig_sender_connections_in_use", "Connections (processes) reserved by running migrations (--max-connections)"
)
CONNECTIONS_LIMIT = Gauge(
    "livemig_sender_connections_limit", "--max-connections: connections running migrations may hold"
)
STARTS_REFUSED = Counter(
    "livemig_sender_starts_refused", "StartMigration calls refused for want of room, by limit", ["limit"]
)
DURATION = Histogram(
    "livemig_sender_migration_duration_seconds",
    "Duration of finished migrations",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
THROUGHPUT = Histogram(
    "livemig_sender_migration_throughput_bytes_per_second",
    "Wire throughput of completed migrations (wire bytes over transfer time)",
    buckets=tuple(float(1 << shift) for shift in range(20, 37, 2)),  # 1 MiB/s .. 64 GiB/s
)
DOWNTIME = Histogram(
    "livemig_sender_downtime_seconds",
    "Measured downtime (guest paused to receiver completed) of completed switchovers",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30),
)
ITERATIONS = Counter("livemig_sender_iterations", "Iterations completed (pre-copy and final), as in the status")
PHASE = Gauge("livemig_sender_migration_phase", "1 for the phase a running migration is in", ["migration_id", "phase"])
REMAINING_BYTES = Gauge(
    "livemig_sender_migration_remaining_bytes", "Bytes still to send of a running migration", ["migration_id"]
)
DIRTY_RATE = Gauge(
    "livemig_sender_migration_dirty_rate_bytes_per_second",
    "Rate the guest dirtied memory during the last iteration of a running migration",
    ["migration_id"],
)
EXPECTED_DOWNTIME = Gauge(
    "livemig_sender_migration_expected_downtime_seconds",
    "Downtime expected if a running migration's guest were paused now",
    ["migration_id"],
)
THROTTLE = Gauge(
    "livemig_sender_migration_throttle_percent",
    "Auto-converge: the share of time a running migration's guest is held stopped",
    ["migration_id"],
)
WILL_NOT_CONVERGE = Gauge(
    "livemig_sender_migration_will_not_converge",
    "1 once a running migration's downtime target is below what its bandwidth and dirty rate allow",
    ["migration_id"],
)
BANDWIDTH_CAP = Gauge(
    "livemig_sender_migration_bandwidth_cap_bytes_per_second",
    "A running migration's bandwidth cap (wire bytes/s of all its connections; 0: none)",
    ["migration_id"],
)
_PER_MIGRATION = (REMAINING_BYTES, DIRTY_RATE, EXPECTED_DOWNTIME, THROTTLE, WILL_NOT_CONVERGE, BANDWIDTH_CAP)


def migration_started(migration_id: str, total_bytes: int) -> None:
    MIGRATIONS_STARTED.inc()
    ACTIVE_MIGRATIONS.inc()
    set_phase(migration_id, "setup")
    REMAINING_BYTES.labels(migration_id).set(total_bytes)
    DIRTY_RATE.labels(migration_id).set(0)
    EXPECTED_DOWNTIME.labels(migration_id).set(0)


def capacity_changed(connections_in_use: int, connections_limit: int) -> None:
    CONNECTIONS_IN_USE.set(connections_in_use)
    CONNECTIONS_LIMIT.set(connections_limit)


def start_refused(limit: str) -> None:
    """limit: "max_migrations" or "max_connections"."""
    STARTS_REFUSED.labels(limit).inc()


def set_phase(migration_id: str, phase: str) -> None:
    """A state set: the current phase 1, the others 0 (only while the migration runs)."""
    if phase not in PHASES:
        return
    for name in PHASES:
        PHASE.labels(migration_id, name).set(1 if name == phase else 0)


def iteration_ended(migration_id: str, remaining_bytes: int, dirty_rate: float, expected_downtime_ms: int) -> None:
    REMAINING_BYTES.labels(migration_id).set(remaining_bytes)
    DIRTY_RATE.labels(migration_id).set(dirty_rate)
    EXPECTED_DOWNTIME.labels(migration_id).set(expected_downtime_ms / 1000)


def bandwidth_cap_set(migration_id: str, bytes_per_second: float) -> None:
    BANDWIDTH_CAP.labels(migration_id).set(bytes_per_second)


def throttle_changed(migration_id: str, percent: int) -> None:
    THROTTLE.labels(migration_id).set(percent)


def will_not_converge(migration_id: str) -> None:
    WILL_NOT_CONVERGE.labels(migration_id).set(1)


def migration_finished(
    migration_id: str, outcome: str, duration_s: float, throughput: float | None, downtime_s: float | None
) -> None:
    """Count the outcome and remove the migration's own series."""
    ACTIVE_MIGRATIONS.dec()
    MIGRATIONS.labels(outcome).inc()
    DURATION.observe(duration_s)
    if throughput is not None:
        THROUGHPUT.observe(throughput)
    if downtime_s is not None:
        DOWNTIME.observe(downtime_s)
    for gauge in _PER_MIGRATION:
        _remove(gauge, migration_id)
    for name in PHASES:
        _remove(PHASE, migration_id, name)


def _remove(metric, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set (e.g. failed before its first iteration)
        metric.remove(*labels)
