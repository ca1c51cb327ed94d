"""Prometheus metrics of the receiver (one process, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

WRITTEN_BYTES = Counter("livemig_receiver_written_bytes", "Page payload bytes written into destination memory")
BATCHES = Counter("livemig_receiver_batches", "Page batches accepted and written")
REJECTED_BATCHES = Counter("livemig_receiver_rejected_batches", "Page batches refused, by reason", ["reason"])
SESSIONS = Counter("livemig_receiver_sessions", "Sessions by outcome", ["outcome"])
ACTIVE_SESSIONS = Gauge("livemig_receiver_active_sessions", "Sessions accepting pages")
ALLOCATED_BYTES = Gauge(
    "livemig_receiver_destination_allocated_bytes",
    "Bytes the destination files of the last completed session occupy on storage",
)
