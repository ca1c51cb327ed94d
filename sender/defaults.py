"""The sender's defaults, one home each: what an operator may set (SenderConfig,
sender/capacity.py) and what a request may leave out (sender/requests.py).

The command line shows and passes the same values. Kept free of imports: the
command line reads it at start, and every worker process imports the command line
again (common/worker_processes.py).
"""

from __future__ import annotations

DEFAULT_MAX_MIGRATIONS = 16  # running at once (sender/capacity.py)
# The control server's threads (sender/server.py) minus these: health, Get, List,
# Cancel and Start always find a free thread, however many watchers there are.
DEFAULT_MAX_WATCH_STREAMS = 16
DEFAULT_MAX_WATCH_STREAMS_PER_CLIENT = 4
DEFAULT_DOWNTIME_MS = 300  # Cloud Hypervisor's default
DEFAULT_MAX_ITERATIONS = 30
# A chunk of sparse memory covers up to this many times the batch limit (sender/chunk_spans.py):
# 4 took 10 %-touched memory 19 % faster than 1, and 8 or 16 no faster than 4.
DEFAULT_CHUNK_SPAN_FACTOR = 4
MAX_CHUNK_SPAN_FACTOR = 16
