"""One human sentence for a migration's failure: gRPC statuses and TLS handshake errors
as an operator reads them (the raw text follows)."""

from __future__ import annotations

import grpc

from livemig.sender.transfer import ConnectionFailed

# What gRPC's TLS handshake errors mean to an operator (the raw text follows).
_TLS_REASONS = (
    ("Hostname Verification", "its certificate does not name the host dialled (subjectAltName)"),
    ("Peer name", "its certificate does not name the host dialled (subjectAltName)"),
    ("CERTIFICATE_VERIFY_FAILED", "its certificate is not signed by the CA given with --tls-ca"),
    ("WRONG_VERSION_NUMBER", "it does not speak TLS (a plaintext receiver?)"),
)


def _unreachable(destination: str, details: str) -> str:
    if any(marker in details for marker in ("andshake failed", "Peer name", "Hostname Verification")):
        reason = next((meaning for marker, meaning in _TLS_REASONS if marker in details), "the TLS handshake failed")
        return f"receiver at {destination} failed TLS verification: {reason}: {details}"
    return f"receiver at {destination} is unavailable: {details}"


def describe_failure(error: BaseException, destination: str) -> str:
    """One human sentence for the status's error field."""
    if isinstance(error, ConnectionFailed):
        details = str(error)
        if error.code in ("UNAVAILABLE", "CANCELLED", "INTERNAL"):
            return _unreachable(destination, details)
        if error.code == "DEADLINE_EXCEEDED":
            return f"receiver at {destination} did not answer in time: {details}"
        if error.code:
            return f"receiver refused ({error.code}): {details}"
        return details
    cause = error if isinstance(error, grpc.RpcError) else error.__cause__
    if isinstance(cause, grpc.RpcError):
        code = cause.code()
        details = str(error) if cause is not error else (cause.details() or "")
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL):
            return _unreachable(destination, details)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"receiver at {destination} did not answer in time: {details}"
        return f"receiver refused ({code.name}): {details}"
    return f"{type(error).__name__}: {error}"
