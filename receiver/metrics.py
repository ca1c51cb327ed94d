"""Prometheus metrics of the receiver (one process, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from livemig.common import build_info  # noqa: F401  (disables _created series; livemig_build_info)
from livemig.receiver.errors import Reason

WRITTEN_BYTES = Counter("livemig_receiver_written_bytes", "Page payload bytes written into destination memory")
ZEROED_BYTES = Counter(
    "livemig_receiver_zeroed_bytes",
    "Bytes the receiver cleared for zero-range records: only pages it had written before (a record "
    "over a page it never wrote clears nothing). The sender's zeroed_bytes counts the records sent.",
)
BATCHES = Counter("livemig_receiver_batches", "Page batches accepted and written")
REJECTED_BATCHES = Counter("livemig_receiver_rejected_batches", "Page batches refused, by reason", ["reason"])
SESSIONS = Counter("livemig_receiver_sessions", "Sessions by outcome", ["outcome"])
for _outcome in ("completed", "aborted", "expired"):
    SESSIONS.labels(_outcome)
ACTIVE_SESSIONS = Gauge("livemig_receiver_active_sessions", "Sessions accepting pages")
ALLOCATED_BYTES = Gauge(
    "livemig_receiver_destination_allocated_bytes",
    "Bytes every session's destination files in --memory-dir occupy on storage (completed ones kept for "
    "their VMs included), read at each scrape",
)
for _reason in Reason:
    REJECTED_BATCHES.labels(_reason.value)  # every reason exported from the start, at 0
