"""Why the receiver refuses a request; the servicer maps each reason to a gRPC status."""

from __future__ import annotations

import enum
import errno

import grpc


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
    COMPRESSION = "compression"  # unknown method, wrong raw_length, bomb, corrupt payload


STATUS_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UNKNOWN_SESSION: grpc.StatusCode.NOT_FOUND,
    Reason.WRONG_SESSION: grpc.StatusCode.PERMISSION_DENIED,
    Reason.MALFORMED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.LENGTH_MISMATCH: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OVERLAP: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.OVERSIZED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NOT_ACTIVE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.BAD_LAYOUT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.TOTALS_MISMATCH: grpc.StatusCode.DATA_LOSS,
    Reason.DIGEST_MISMATCH: grpc.StatusCode.DATA_LOSS,
    Reason.STORAGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.EXPIRED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.COMPRESSION: grpc.StatusCode.INVALID_ARGUMENT,
}


class ReceiverError(Exception):
    """A refused request. Raised before anything is written."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_FULL = {errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}


def os_error_text(error: OSError) -> str:
    """What went wrong, without the file name: errors go to clients, and host paths
    (the memory directory, the private state folder) are none of their business."""
    return _FULL.get(error.errno or 0, error.strerror or type(error).__name__)


def storage_error(error: OSError, doing: str) -> ReceiverError:
    """A storage fault while writing destination memory: a storage fault, not a network one
    (RESOURCE_EXHAUSTED; the sender does not retry it). No path in the message."""
    return ReceiverError(Reason.STORAGE, f"{doing}: {os_error_text(error)}")


def peer_identities(context: grpc.ServicerContext) -> tuple[bytes, ...] | None:
    """The caller's verified certificate identities (mutual TLS), or None."""
    identities = context.peer_identities()
    return tuple(identities) if identities else None


def check_owner(owner: tuple[bytes, ...] | None, context: grpc.ServicerContext) -> None:
    """Under mutual TLS a session belongs to the certificate identity that prepared it:
    another trusted client holding the token still cannot use it (control calls or streams)."""
    if owner is not None and peer_identities(context) != owner:
        raise ReceiverError(Reason.WRONG_SESSION, "session was prepared by another client certificate; refused")


def refusal_for_state(state: str, expired_after: float) -> ReceiverError:
    """Why a batch or stream of a session that is no longer active is refused."""
    if state == "expired":
        return ReceiverError(
            Reason.EXPIRED, f"session expired after {expired_after:g} s without traffic; its destination was dropped"
        )
    return ReceiverError(Reason.NOT_ACTIVE, f"session is {state}; no more pages accepted")
