"""The commands that talk to a sender: start and follow, list, show, watch, cancel.

Following a migration this command started owns it from the operator's terminal:
Ctrl-C, SIGTERM or SIGHUP cancel it on the sender (the source guest is resumed
there) before the CLI exits 130, 143 or 129, so a live migration never ends with
the source paused and nobody watching. `migrations watch` follows someone else's
migration: interrupted, it stops watching and leaves the migration running.
"""

from __future__ import annotations

import json
import signal
import sys

import click
import grpc
from google.protobuf import json_format

from livemig.cli import client, report
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import Security


def _print_final(status: pb.MigrationStatus, as_json: bool) -> None:
    if as_json:
        click.echo(client.status_to_json(status))
    else:
        report.print_status(status)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal, as shells report it: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    return 128 + (interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT)


def handle_termination() -> None:
    """SIGTERM and SIGHUP (a closed terminal, a service manager) do what Ctrl-C does."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupted)


def _follow(
    stub: pb_grpc.SenderStub, sender: str, migration_id: str, as_json: bool, owns_migration: bool = True
) -> int:
    """Watch to the end with a bar on stderr when it is a terminal. Ctrl-C (or SIGTERM,
    SIGHUP) cancels a migration this command started; a watcher of someone else's
    migration (`migrations watch`) only stops watching."""
    try:
        with report.progress(enabled=sys.stderr.isatty(), show_iterations=not as_json) as on_update:
            status = client.follow(stub, migration_id, on_update)
    except KeyboardInterrupt as interrupt:
        if not owns_migration:
            click.echo(
                f"stopped watching; migration {migration_id} goes on (livemig migrations cancel to cancel it)",
                err=True,
            )
            return exit_code_of(interrupt)
        return _cancel_after_interrupt(stub, sender, migration_id, as_json, exit_code_of(interrupt))
    except grpc.RpcError as error:
        line, code = client.rpc_error_line(error, sender)
        click.echo(f"{line} (migration {migration_id})", err=True)
        return code
    _print_final(status, as_json)
    return client.exit_code(status)


def _cancel_after_interrupt(
    stub: pb_grpc.SenderStub, sender: str, migration_id: str, as_json: bool, code: int = client.EXIT_INTERRUPTED
) -> int:
    click.echo(f"interrupted: cancelling migration {migration_id}", err=True)
    try:
        status = client.cancel(stub, migration_id)
    except grpc.RpcError as error:
        line, _code = client.rpc_error_line(error, sender)
        click.echo(f"{line}: migration {migration_id} may still be running", err=True)
        return code
    _print_final(status, as_json)
    return code


def start_and_follow(
    sender: str, request: pb.StartMigrationRequest, security: Security, as_json: bool, detach: bool
) -> int:
    handle_termination()
    with security.channel(sender) as channel:
        stub = pb_grpc.SenderStub(channel)
        try:
            migration_id = client.start_migration(stub, request)
        except KeyboardInterrupt as interrupt:
            click.echo("interrupted before the sender answered", err=True)
            return exit_code_of(interrupt)
        except grpc.RpcError as error:
            line, code = client.rpc_error_line(error, sender)
            click.echo(line, err=True)
            return code
        if detach:
            click.echo(json.dumps({"migration_id": migration_id}) if as_json else migration_id)
            return client.EXIT_COMPLETED
        # On stderr at once: a redirected stdout, or a client killed before the end, loses nothing.
        click.echo(f"migration {migration_id} started", err=True)
        return _follow(stub, sender, migration_id, as_json)


def _call(sender: str, security: Security, call) -> tuple[object, int]:
    with security.channel(sender) as channel:
        try:
            return call(pb_grpc.SenderStub(channel)), client.EXIT_COMPLETED
        except grpc.RpcError as error:
            line, code = client.rpc_error_line(error, sender)
            click.echo(line, err=True)
            return None, code


def list_migrations(sender: str, security: Security, as_json: bool) -> int:
    response, code = _call(sender, security, lambda stub: stub.ListMigrations(pb.ListMigrationsRequest(), timeout=30))
    if response is None:
        return code
    if as_json:
        for status in response.migrations:
            click.echo(client.status_to_json(status))
    else:
        report.print_list(list(response.migrations))
    return client.EXIT_COMPLETED


def show_migration(sender: str, migration_id: str, security: Security, as_json: bool) -> int:
    status, code = _call(
        sender, security, lambda stub: stub.GetMigration(pb.MigrationRequest(migration_id=migration_id), timeout=30)
    )
    if status is None:
        return code
    _print_final(status, as_json)
    return client.EXIT_FAILED if status.state in (pb.FAILED, pb.CANCELLED) else client.EXIT_COMPLETED


def watch_migration(sender: str, migration_id: str, security: Security, as_json: bool) -> int:
    """Follow to the end; Ctrl-C stops watching, the migration goes on (`migrations cancel` cancels)."""
    handle_termination()
    with security.channel(sender) as channel:
        return _follow(pb_grpc.SenderStub(channel), sender, migration_id, as_json, owns_migration=False)


def cancel_migration(sender: str, migration_id: str, security: Security, as_json: bool) -> int:
    status, code = _call(sender, security, lambda stub: client.cancel(stub, migration_id))
    if status is None:
        return code
    _print_final(status, as_json)
    return client.EXIT_COMPLETED if status.state == pb.CANCELLED else client.EXIT_FAILED


def check_migration(sender: str, request: pb.StartMigrationRequest, security: Security, as_json: bool) -> int:
    """`send-migration --check`: every problem on a line of its own, then the forecast."""
    response, code = _call(sender, security, lambda stub: stub.CheckMigration(request, timeout=600))
    if response is None:
        return code
    if as_json:
        click.echo(json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None))
    else:
        report.print_check(response)
    return client.EXIT_COMPLETED if not response.problems else client.EXIT_FAILED


def set_limits(sender: str, limits: pb.MigrationLimits, security: Security, as_json: bool) -> int:
    """`migrations set`: the new limits, then the status with them in force."""
    status, code = _call(sender, security, lambda stub: stub.SetMigrationLimits(limits, timeout=30))
    if status is None:
        return code
    _print_final(status, as_json)
    return client.EXIT_COMPLETED
