"""What a receiver's PrepareMigration reply may ask of the sender, checked before any stream.

The receiver names the batch limit and the data ports the sender's connections
use. A receiver is trusted with the guest's memory but not with the source host's
CPU: a limit of one byte made the sender send 1-byte batches (19 789 in 10 s, an
ETA of 0.6 h for a 4 MiB guest), and a port of 70 000 wrapped to 4464 in the
endpoint string. Both are refused here, and the migration fails with one clear
line (the session is aborted as for any failure).
"""

from __future__ import annotations

from collections.abc import Sequence

from livemig.sender.connection_messages import ConnectionSpec

# The smallest batch a livemig receiver announces (its --max-batch-bytes floor: one
# 4 KiB page). Below it every page costs a round trip of its own, or several.
MIN_RECEIVER_BATCH_BYTES = 4096
MAX_PORT = 65535


class ReceiverOfferRefused(ValueError):
    """The receiver asked for something this sender will not do."""


def endpoint_port(endpoint: str) -> int:
    """The port of a host:port endpoint (hosts may be [v6] literals); -1 when it is not a number."""
    port = endpoint.rpartition(":")[2]
    return int(port) if port.isdigit() else -1


def check_offer(specs: Sequence[ConnectionSpec]) -> None:
    """Refuse batch sizes below MIN_RECEIVER_BATCH_BYTES and ports outside 1..65535."""
    for spec in specs:
        if spec.chunk_bytes < MIN_RECEIVER_BATCH_BYTES:
            raise ReceiverOfferRefused(
                f"the receiver allows batches of {spec.chunk_bytes} bytes, below the {MIN_RECEIVER_BATCH_BYTES} "
                "this sender accepts; refusing to migrate in batches that small"
            )
        port = endpoint_port(spec.endpoint)
        if not 1 <= port <= MAX_PORT:
            raise ReceiverOfferRefused(
                f"the receiver announced data port {spec.endpoint.rpartition(':')[2]!r}, "
                f"outside 1..{MAX_PORT}; refusing to connect"
            )
