"""Transport security for every livemig channel: TLS, mutual TLS recommended.

Guest memory holds secrets and whoever reaches a receiver could overwrite a VM's
memory, so plaintext is only used when asked for by name (`--insecure`), with a
warning. With a CA given, a server requires and verifies client certificates
(mutual TLS) and a client verifies the server against that CA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger("livemig.tls")

PLAINTEXT_WARNING = "plaintext gRPC (--insecure): guest memory and control calls travel unencrypted and unauthenticated"


class SecurityConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Security:
    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    insecure: bool = False

    @classmethod
    def from_files(cls, cert: str | None, key: str | None, ca: str | None, insecure: bool, server: bool) -> Security:
        if insecure:
            if cert or key or ca:
                raise SecurityConfigError("--insecure cannot be combined with --tls-cert/--tls-key/--tls-ca")
            return cls(insecure=True)
        if bool(cert) != bool(key):
            raise SecurityConfigError("--tls-cert and --tls-key go together")
        if server and not cert:
            raise SecurityConfigError(
                "refusing to serve plaintext: give --tls-cert and --tls-key (and --tls-ca for mutual TLS), "
                "or --insecure"
            )
        if not server and not ca:
            raise SecurityConfigError("give --tls-ca to verify the server (and --tls-cert/--tls-key), or --insecure")
        return cls(
            cert=Path(cert).read_bytes() if cert else None,
            key=Path(key).read_bytes() if key else None,
            ca=Path(ca).read_bytes() if ca else None,
        )

    @property
    def mutual(self) -> bool:
        return bool(self.ca and self.cert)

    def server_credentials(self) -> grpc.ServerCredentials | None:
        if self.insecure:
            return None
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=self.ca is not None
        )

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
        if self.insecure:
            return grpc.insecure_channel(target, options=list(options))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )
        return grpc.secure_channel(target, credentials, options=list(options))

    def warn_if_plaintext(self, role: str) -> None:
        if self.insecure:
            log.warning("%s: %s", role, PLAINTEXT_WARNING)


INSECURE = Security(insecure=True)
