"""What protects the receiver from being run out of memory, disk or threads: one home for
each limit's default, which the registry, the server and the command line all read.

Kept free of heavy imports: the command line reads its defaults here at start, and
every worker process imports the command line again (common/worker_processes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from livemig.common.stream_activity import QUIET_SECONDS
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.receiver.batch_ids import DEFAULT_MAX_UNSETTLED_BATCHES


@dataclass(frozen=True, slots=True)
class ReceiverLimits:
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_sessions: int = 16
    max_destination_bytes: int = 0  # 0: the free space of the memory directory
    idle_timeout_seconds: float = 60.0
    data_workers: int = 0  # 0: one per core
    max_streams_per_worker: int = 128
    write_mode: str = "auto"  # receiver/write_mode.WriteMode: auto, pwrite or mapped
    max_unsettled_batches: int = DEFAULT_MAX_UNSETTLED_BATCHES  # receiver/batch_ids.py
    # A data worker gives its freed buffers back after this long without a stream
    # (common/stream_activity.py); until then the next session reuses them.
    keep_buffers_seconds: float = QUIET_SECONDS
