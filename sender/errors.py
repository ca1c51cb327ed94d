"""Why the sender refuses a control call; the servicer maps each reason to a gRPC status.

Request validation and resource acquisition raise `SenderError` with a reason;
only `sender/service.py` knows gRPC status codes (as on the receiver).
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    INVALID = "invalid"  # a request value out of its rule (range, length, charset, layout)
    NOT_FOUND = "not_found"  # a named file that does not exist
    FORBIDDEN = "forbidden"  # a file outside --memory-root, or one the sender may not open
    GUEST = "guest"  # the guest pid is not the guest of these regions
    UNKNOWN_MIGRATION = "unknown_migration"
    FINISHED = "finished"  # cancel of a migration that already ended otherwise
    BUSY = "busy"  # too many watch streams (per client or in total), migrations or connections


class SenderError(Exception):
    """A refused control call. Raised before anything is opened, created or signalled
    (validation) or after everything acquired so far was released (resources)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
