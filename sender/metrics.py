"""Prometheus metrics of the sender (one process, default registry). No per-migration labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SCANNED_BYTES = Counter("livemig_sender_scanned_bytes", "Guest memory bytes inspected for zero pages")
ZERO_BYTES = Counter("livemig_sender_zero_bytes", "Bytes found all-zero and skipped (not transmitted)")
ZERO_PAGES = Counter("livemig_sender_zero_pages", "Pages found all-zero and skipped")
NORMAL_PAGES = Counter("livemig_sender_normal_pages", "Pages transmitted with their contents")
TRANSMITTED_BYTES = Counter("livemig_sender_transmitted_bytes", "Page payload bytes transmitted")
WIRE_BYTES = Counter("livemig_sender_wire_bytes", "Bytes written to page streams, payload and framing")
BATCHES = Counter("livemig_sender_batches", "Page batches sent")
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
THROUGHPUT = Gauge(
    "livemig_sender_last_throughput_bytes_per_second",
    "Wire throughput of the last finished migration (wire bytes over transfer time)",
)
DURATION = Histogram(
    "livemig_sender_migration_duration_seconds",
    "Duration of finished migrations",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
ITERATIONS = Counter("livemig_sender_iterations", "Pre-copy iterations completed")
EXPECTED_DOWNTIME = Gauge(
    "livemig_sender_expected_downtime_seconds", "Downtime expected if the guest were paused now (last estimate)"
)
DOWNTIME = Gauge("livemig_sender_last_downtime_seconds", "Measured downtime of the last completed switchover")
