"""Why the receiver refuses a request; the servicer maps each reason to a gRPC status."""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"
    UNKNOWN_SESSION = "unknown_session"
    WRONG_SESSION = "wrong_session"
    MALFORMED = "malformed"
    OUT_OF_RANGE = "out_of_range"
    LENGTH_MISMATCH = "length_mismatch"
    OVERLAP = "overlap"
    OVERSIZED = "oversized"
    NOT_ACTIVE = "not_active"
    BAD_LAYOUT = "bad_layout"
    TOTALS_MISMATCH = "totals_mismatch"
    DIGEST_MISMATCH = "digest_mismatch"
    STORAGE = "storage"
    LIMIT = "limit"
    EXPIRED = "expired"


class ReceiverError(Exception):
    """A refused request. Raised before anything is written."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
