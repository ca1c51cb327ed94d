"""Options every command shares: addresses, TLS files, environment variable names.

Bad values end as click usage errors (one line, exit 2) before anything starts:
a port out of range, a host that does not resolve, a key that does not match its
certificate. The TLS files are loaded with the `ssl` module first, because gRPC
reports the same mistakes later as a multi-line handshake failure.
"""

from __future__ import annotations

import functools
import socket
import ssl

import click

ENV_PREFIX = "LIVEMIG"


class HostPort(click.ParamType):
    """HOST:PORT ([v6]:PORT); with `resolve`, the host must resolve here (a --listen address)."""

    name = "host:port"

    def __init__(self, resolve: bool = False, allow_port_zero: bool = False) -> None:
        self.resolve = resolve
        self.allow_port_zero = allow_port_zero

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "HOST:PORT"

    def convert(self, value, param, ctx) -> str:
        text = str(value).strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit() or not host:
            self.fail(f"{value!r} is not HOST:PORT", param, ctx)
        port = int(port_text)
        low = 0 if self.allow_port_zero else 1
        if not low <= port <= 65535:
            self.fail(f"port {port} is not between {low} and 65535", param, ctx)
        bare_host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if self.resolve:
            try:
                socket.getaddrinfo(bare_host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as error:
                self.fail(f"cannot resolve {host!r}: {error}", param, ctx)
        return f"{host}:{port}"


class Host(click.ParamType):
    """A host name or address that resolves here (something to bind to)."""

    name = "host"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "HOST"

    def convert(self, value, param, ctx) -> str:
        host = str(value).strip()
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            socket.getaddrinfo(bare, 0, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as error:
            self.fail(f"cannot resolve {host!r}: {error}", param, ctx)
        return host


def check_tls_files(cert: str | None, key: str | None, ca: str | None, server: bool) -> None:
    """Load the files as TLS would, so a bad key or certificate is one line, not a handshake error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as error:
            raise click.UsageError(f"--tls-cert {cert} / --tls-key {key}: cannot be used together: {error}") from None
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as error:
            raise click.UsageError(f"--tls-ca {ca}: not a PEM CA bundle: {error}") from None


def tls_options(server: bool):
    """--tls-cert/--tls-key/--tls-ca/--insecure, checked and resolved into a `security` argument."""

    def decorate(command):
        @click.option("--insecure", is_flag=True, help="Plaintext gRPC (no TLS). Only for tests and local demos.")
        @click.option(
            "--tls-ca",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="CA bundle that peers' certificates must chain to"
            + (" (clients must then present one: mutual TLS)." if server else "."),
        )
        @click.option(
            "--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="Private key of --tls-cert."
        )
        @click.option(
            "--tls-cert",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="Certificate (chain) this process presents" + ("." if server else " (mutual TLS)."),
        )
        @functools.wraps(command)
        def wrapper(*args, tls_cert, tls_key, tls_ca, insecure, **kwargs):
            from livemig.common.tls import Security, SecurityConfigError

            try:
                security = Security.from_files(tls_cert, tls_key, tls_ca, insecure, server=server)
            except SecurityConfigError as error:
                raise click.UsageError(str(error)) from error
            if not insecure:
                check_tls_files(tls_cert, tls_key, tls_ca, server)
            return command(*args, security=security, **kwargs)

        return wrapper

    return decorate


def name_envvars(group: click.Group, prefix: str = ENV_PREFIX) -> None:
    """Give every option the environment variable named after its flag, shown in --help:
    LIVEMIG_<COMMAND>_<FLAG> (LIVEMIG_SEND_MIGRATION_SENDER), LIVEMIG_<FLAG> for the group's."""
    for param in group.params:
        _name_envvar(param, prefix)
    for name, command in group.commands.items():
        command_prefix = f"{prefix}_{name.upper().replace('-', '_')}"
        if isinstance(command, click.Group):
            name_envvars(command, command_prefix)
            continue
        for param in command.params:
            _name_envvar(param, command_prefix)


def _name_envvar(param: click.Parameter, prefix: str) -> None:
    if not isinstance(param, click.Option) or param.name in ("help", "version"):
        return
    flag = next(opt for opt in param.opts if opt.startswith("--")).lstrip("-")  # the first: the documented one
    param.envvar = f"{prefix}_{flag.upper().replace('-', '_')}"
    param.show_envvar = True
