"""`livemig migrate-vm`: a whole QEMU VM, with livemig carrying its RAM and QEMU its devices.

QEMU keeps guest RAM in shared files (`memory-backend-file,share=on`). With the
migration capability `x-ignore-shared` on both ends QEMU migrates only device
state and trusts that the destination's files already hold the RAM. That is the
split this command drives, as an orchestrator on the source host (where the
sender and the guest's QMP socket are; libvirt's source daemon has the same seat):

1. Ask the source QEMU (QMP) for its RAM backends and their files.
2. `StartMigration` on the sender with those files and the guest's QMP socket name:
   the sender checks the guest, pauses it (`stop`), moves its RAM (zero pages
   skipped, digest verified) and leaves it paused on COMPLETED.
3. As soon as the receiver has made the destination files (the status names them),
   start the destination QEMU from the operator's command template with
   `-incoming defer`, so that its start overlaps the memory copy.
4. On COMPLETED: `x-ignore-shared` on both QEMUs, `migrate-incoming` on the
   destination, `migrate` on the source; then `cont` on the destination.
5. Quit the source (unless --keep-source).

Downtime is the guest stopped until the destination runs: the sender's measured
pause-to-completion (memory), then what this command waits for after it (the rest
of the destination's start, device state). A failure at any step resumes the
source and stops the destination QEMU: nothing is left paused, no second copy runs.

QEMU does not export its dirty log, so a QEMU guest is migrated stop-and-copy; live
pre-copy needs a VMM that writes livemig's dirty maps (docs/dirty-log.md).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from livemig.cli import client
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.qmp import MemoryBackend, QmpConnection, QmpFailure, qmp_connection, wait_for_qmp
from livemig.common.tls import INSECURE, Security

DEVICE_STATE_TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.005


class VmMigrationError(RuntimeError):
    """A step failed; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class VmMigrationPlan:
    sender: str  # HOST:PORT of the sender service
    destination: str  # HOST:PORT of the receiver service
    qmp_dir: Path  # the sender's --qmp-dir, as seen from here (the source host)
    guest: str  # the source QMP socket's name under qmp_dir
    destination_command: str  # template: {qmp}, {mem[ID]} (a backend's destination file)
    destination_qmp: str = ""  # the destination QEMU's QMP unix socket ("": a fresh one)
    incoming: str = ""  # HOST:PORT the destination QEMU listens on for device state ("": a free port)
    connections: int = 2
    skip_zero_pages: bool = True
    verify: bool = True
    keep_source: bool = False
    start_timeout: float = 30.0
    destination_log: str = ""  # the destination QEMU's stdout and stderr ("": discarded)


@dataclass(slots=True)
class VmMigrationReport:
    """What happened, with the downtime and its parts (ms)."""

    ok: bool = False
    error: str = ""
    status: pb.MigrationStatus | None = None
    backends: list[MemoryBackend] = field(default_factory=list)
    downtime_ms: float = 0.0
    memory_ms: float = 0.0  # guest paused until the receiver accepted the memory (sender-measured)
    destination_start_ms: float = 0.0  # the destination's start, all of it
    destination_wait_ms: float = 0.0  # the part of it the paused guest waited for
    device_state_ms: float = 0.0  # migrate on the source until the destination runs
    device_state_bytes: int = 0  # QEMU's own transfer (device state and non-shared RAM: ROMs, VGA)
    source_state: str = ""
    destination_state: str = ""
    destination_pid: int = 0
    destination_qmp: str = ""


def check_template(template: str, backend_ids: list[str]) -> list[str]:
    """The template's words with dummy values: a KeyError or ValueError names a bad placeholder."""
    return _expand(template, "qmp", {backend: f"mem-{backend}" for backend in backend_ids})


def _expand(template: str, qmp: str, files: dict[str, str]) -> list[str]:
    return [word.format(qmp=qmp, mem=files) for word in shlex.split(template)]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host.strip("[]"), 0))
        return probe.getsockname()[1]


class DestinationVm:
    """The destination QEMU this command starts (and stops again on any failure)."""

    def __init__(self, argv: list[str], qmp: str, log_path: str) -> None:
        self.qmp = qmp
        self.started = time.monotonic()
        self.ready_at: float | None = None
        self.error = ""
        log = open(log_path or os.devnull, "ab")  # noqa: SIM115 (handed to the process)
        try:
            # A session of its own: Ctrl-C on this terminal must not reach the new VM.
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self._ready = threading.Thread(target=self._wait_ready, name="destination-qemu", daemon=True)
        self._ready.start()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        try:
            wait_for_qmp(self.qmp, timeout, alive=lambda: self.process.poll() is None)
            with qmp_connection(self.qmp, 5.0) as qmp:
                state = qmp.run_state()
        except QmpFailure as error:
            code = self.process.poll()
            self.error = (
                f"the destination QEMU exited with status {code}"
                if code is not None
                else f"the destination QEMU's QMP socket: {error}"
            )
            return
        if state != "inmigrate":
            self.error = f"the destination QEMU is {state!r}, not waiting for a migration (-incoming)"
            return
        self.ready_at = time.monotonic()

    def wait_ready(self, timeout: float) -> float:
        self._ready.join(timeout)
        if self.ready_at is None:
            raise VmMigrationError(self.error or f"the destination QEMU was not ready within {timeout:g} s")
        return self.ready_at

    def stop(self) -> None:
        """Quit and reap the destination QEMU (a failed or cancelled migration)."""
        if self.process.poll() is None:
            try:
                with qmp_connection(self.qmp, 2.0) as qmp:
                    qmp.execute("quit")
                self.process.wait(5)
            except (QmpFailure, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def source_backends(qmp_path: str) -> tuple[list[MemoryBackend], str]:
    try:
        with qmp_connection(qmp_path) as qmp:
            return qmp.memory_backends(), qmp.run_state()
    except QmpFailure as error:
        raise VmMigrationError(f"the source guest's QMP socket {qmp_path}: {error}") from error


def _destination_files(backends: list[MemoryBackend], status: pb.MigrationStatus) -> dict[str, str]:
    """Backend id -> the receiver's file for it. The request lists the backends in order
    without GPAs, so the sender places them one after the other from 0."""
    by_gpa = {region.gpa: region.path for region in status.destination_regions}
    files, gpa = {}, 0
    for backend in backends:
        if gpa not in by_gpa:
            raise VmMigrationError(f"the receiver named no destination file for RAM backend {backend.id!r}")
        files[backend.id] = by_gpa[gpa]
        gpa += backend.size
    return files


def migrate_vm(
    plan: VmMigrationPlan,
    security: Security = INSECURE,
    on_update: Callable[[pb.MigrationStatus], None] | None = None,
) -> VmMigrationReport:
    """Run the whole VM migration; never leaves the source paused or a destination running
    on failure. Raises KeyboardInterrupt after cleaning up when interrupted."""
    report = VmMigrationReport()
    source_qmp = str(plan.qmp_dir / plan.guest)
    scratch = Path(tempfile.mkdtemp(prefix="livemig-vm-"))
    destination_qmp = plan.destination_qmp or str(scratch / "destination.qmp")
    report.destination_qmp = destination_qmp
    destination: DestinationVm | None = None
    migration_id = ""
    paused_by_sender = False
    try:
        report.backends, source_state = source_backends(source_qmp)
        if source_state != "running":
            raise VmMigrationError(f"the source guest is {source_state!r}, not running")
        try:
            check_template(plan.destination_command, [b.id for b in report.backends])
        except (KeyError, ValueError, IndexError) as error:
            raise VmMigrationError(
                f"--destination-command: bad placeholder {error} (use {{qmp}}, {{mem[ID]}})"
            ) from None
        host = plan.destination.rpartition(":")[0]
        incoming = plan.incoming or f"{host}:{free_port(host)}"
        request = pb.StartMigrationRequest(
            destination=plan.destination,
            regions=[pb.GuestMemoryRegion(path=backend.mem_path) for backend in report.backends],
            connections=plan.connections,
            skip_zero_pages=plan.skip_zero_pages,
            verify=plan.verify,
            qmp_socket=plan.guest,
        )

        def launch(status: pb.MigrationStatus) -> None:
            nonlocal destination
            if on_update is not None:
                on_update(status)
            if destination is None and status.destination_regions and status.state == pb.RUNNING:
                files = _destination_files(report.backends, status)
                destination = DestinationVm(
                    _expand(plan.destination_command, destination_qmp, files), destination_qmp, plan.destination_log
                )
                report.destination_pid = destination.process.pid

        with security.channel(plan.sender) as channel:
            stub = pb_grpc.SenderStub(channel)
            try:
                migration_id = client.start_migration(stub, request)
                paused_by_sender = True  # from here the sender may pause it, and resumes it on failure
                status = client.follow(stub, migration_id, launch)
            except grpc.RpcError as error:
                raise VmMigrationError(client.rpc_error_line(error, plan.sender)[0]) from None
            except KeyboardInterrupt:
                if migration_id:
                    with contextlib.suppress(grpc.RpcError):
                        client.cancel(stub, migration_id)  # the sender resumes the guest
                raise
        report.status = status
        if status.state != pb.COMPLETED:
            raise VmMigrationError(f"memory migration {pb.MigrationState.Name(status.state)}: {status.error}")
        completed = time.monotonic()
        report.memory_ms = status.stats.downtime_ms
        if destination is None:
            raise VmMigrationError("the destination QEMU was never started (no destination files named)")
        ready = destination.wait_ready(plan.start_timeout)
        report.destination_start_ms = (ready - destination.started) * 1000
        report.destination_wait_ms = max(0.0, ready - completed) * 1000
        device_started = time.monotonic()
        report.device_state_bytes = _device_state(source_qmp, destination_qmp, incoming)
        running = time.monotonic()
        report.device_state_ms = (running - device_started) * 1000
        report.downtime_ms = report.memory_ms + (running - completed) * 1000
        report.destination_state = "running"
        if not plan.keep_source:
            _quit(source_qmp)
            report.source_state = "quit"
        else:
            report.source_state = _state(source_qmp)
        report.ok = True
        return report
    except VmMigrationError as error:
        report.error = str(error)
        _roll_back(report, source_qmp, destination, paused_by_sender)
        return report
    except BaseException:
        _roll_back(report, source_qmp, destination, paused_by_sender)
        raise
    finally:
        if report.ok or destination is None:
            with contextlib.suppress(OSError):
                scratch.rmdir()  # empty unless the destination's QMP socket lives there


def _device_state(source_qmp: str, destination_qmp: str, incoming: str) -> int:
    """QEMU's own migration with x-ignore-shared; the destination is running at return."""
    uri = f"tcp:{incoming}"
    try:
        with qmp_connection(destination_qmp) as destination, qmp_connection(source_qmp) as source:
            destination.set_capabilities(x_ignore_shared=True)
            destination.execute("migrate-incoming", uri=uri)
            source.set_capabilities(x_ignore_shared=True)
            source.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})  # no 128 MiB/s default cap
            info = source.migrate_and_wait(uri, POLL_SECONDS, DEVICE_STATE_TIMEOUT_SECONDS)
            _run_destination(destination)
    except QmpFailure as error:
        raise VmMigrationError(f"device-state migration: {error}") from error
    return int(info.get("ram", {}).get("transferred", 0))


def _run_destination(destination: QmpConnection) -> None:
    """Wait for the destination to load the device state, then run it (a guest paused at
    the source arrives paused)."""
    deadline = time.monotonic() + DEVICE_STATE_TIMEOUT_SECONDS
    state = destination.run_state()
    while state == "inmigrate":
        if time.monotonic() > deadline:
            raise VmMigrationError("the destination QEMU did not finish loading the device state")
        time.sleep(POLL_SECONDS)
        state = destination.run_state()
    if state == "paused":
        destination.execute("cont")
        state = destination.run_state()
    if state != "running":
        raise VmMigrationError(f"the destination QEMU is {state!r} after the migration, not running")


def _state(qmp_path: str) -> str:
    try:
        with qmp_connection(qmp_path, 5.0) as qmp:
            return qmp.run_state()
    except QmpFailure:
        return "unknown"


def _quit(qmp_path: str) -> None:
    try:
        with qmp_connection(qmp_path, 5.0) as qmp:
            qmp.execute("quit")
    except QmpFailure:
        pass  # it quits as it answers; a closed socket is success here


def _roll_back(
    report: VmMigrationReport, source_qmp: str, destination: DestinationVm | None, paused_by_sender: bool
) -> None:
    """Stop the destination, and run the source again if it is paused because of us."""
    if destination is not None:
        destination.stop()
        report.destination_state = "stopped"
    if paused_by_sender:
        try:
            with qmp_connection(source_qmp, 5.0) as qmp:
                info = qmp.execute("query-migrate")
                if info.get("status") in ("active", "setup", "pre-switchover", "device"):
                    qmp.execute("migrate_cancel")
                state = qmp.run_state()
                if state in ("paused", "postmigrate", "finish-migrate"):
                    qmp.execute("cont")
                report.source_state = qmp.run_state()
        except QmpFailure as error:
            report.source_state = "unknown"
            report.error += f"; the source guest could not be resumed: {error}"
    else:
        report.source_state = _state(source_qmp)


def print_report(report: VmMigrationReport, as_json: bool = False) -> None:
    """The VM migration's outcome: downtime and its parts, then the memory migration's table."""
    import json

    import click

    from livemig.cli import report as tables

    figures = {
        "ok": report.ok,
        "error": report.error,
        "migration_id": report.status.migration_id if report.status is not None else "",
        "downtime_ms": round(report.downtime_ms, 1),
        "memory_ms": round(report.memory_ms, 1),
        "destination_start_ms": round(report.destination_start_ms, 1),
        "destination_wait_ms": round(report.destination_wait_ms, 1),
        "device_state_ms": round(report.device_state_ms, 1),
        "device_state_bytes": report.device_state_bytes,
        "source_state": report.source_state,
        "destination_state": report.destination_state,
        "destination_pid": report.destination_pid,
        "destination_qmp": report.destination_qmp,
    }
    if as_json:
        click.echo(json.dumps(figures))
        return
    if report.status is not None and report.status.state != pb.MIGRATION_STATE_UNSPECIFIED:
        tables.print_status(report.status)
    console = tables.console_for()
    rows = [
        ["downtime (guest stopped -> destination running)", f"{report.downtime_ms:.0f} ms"],
        ["  memory (paused -> receiver accepted, verified)", f"{report.memory_ms:.0f} ms"],
        ["  destination start, waited for", f"{report.destination_wait_ms:.0f} ms"],
        ["  device state (QEMU, x-ignore-shared)", f"{report.device_state_ms:.0f} ms"],
        ["destination start, overlapping the memory copy", f"{report.destination_start_ms:.0f} ms"],
        ["device state moved by QEMU", tables.human_bytes(report.device_state_bytes)],
        ["source guest", report.source_state],
        [
            "destination guest",
            f"{report.destination_state} (pid {report.destination_pid}, QMP {report.destination_qmp})",
        ],
    ]
    if report.ok:
        tables.print_table(console, "VM migration", ["", "measured"], rows, markdown=False)
    else:
        click.echo(f"VM migration failed: {report.error}", err=True)
        click.echo(
            f"source guest: {report.source_state}; destination: {report.destination_state or 'not started'}", err=True
        )
