"""Real QEMU guests: livemig carries a running VM's RAM, QEMU its device state.

The happy path boots Debian's cloud kernel with a busybox initramfs under TCG; the
guest checks itself (the md5 of a blob of random bytes it made at boot, printed
again every second) and must go on counting at the destination with the same md5.
The failure paths use a firmware-only guest (SeaBIOS finding nothing to boot: a
running QEMU in milliseconds) whose RAM file holds random bytes, so that the memory
copy has something to move.

Skipped only where QEMU cannot be installed (no qemu-system-x86_64, busybox-static
or apt): `./dev test` installs them on Debian.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from livemig.cli import qemu_guest
from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.qmp import qmp_connection
from tests.helpers import run_cli, sender_stub

MISSING = qemu_guest.missing_tools()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(bool(MISSING), reason=f"QEMU guests need {', '.join(MISSING)} (Debian packages)"),
]

SIZE_MIB = 256


@pytest.fixture(scope="module")
def image() -> qemu_guest.GuestImage:
    return qemu_guest.prepare_guest()


@pytest.fixture
def hosts(shm_dir: Path) -> Iterator[tuple[ServiceProcess, ServiceProcess, Path]]:
    """A receiver, and a sender that takes QMP sockets from shm_dir/qmp."""
    qmp_dir = shm_dir / "qmp"
    qmp_dir.mkdir()
    with (
        ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "destination")]) as rx,
        ServiceProcess("sender", ["--qmp-dir", str(qmp_dir)]) as tx,
    ):
        yield rx, tx, qmp_dir


def firmware_guest(folder: Path, qmp_dir: Path, name: str = "vm", share: bool = True, fill: float = 1.0):
    """A running firmware-only QEMU whose RAM file holds random bytes."""
    memory = folder / f"{name}.ram"
    make_image(memory, SIZE_MIB << 20, fill, seed=3)
    argv = qemu_guest.qemu_argv(
        None, memory, SIZE_MIB, str(qmp_dir / name), folder / f"{name}.console", qemu_guest.GuestOptions(), share=share
    )
    return qemu_guest.QemuVm(argv, str(qmp_dir / name), folder / f"{name}.console"), memory


def destination_template(image: qemu_guest.GuestImage | None, folder: Path, size_mib: int = SIZE_MIB) -> str:
    argv = qemu_guest.qemu_argv(
        image,
        Path("{mem[mem]}"),
        size_mib,
        "{qmp}",
        folder / "destination.console",
        qemu_guest.GuestOptions(fill_mib=32),
        incoming=True,
    )
    return shlex.join(argv)


def migrate_vm_args(rx: ServiceProcess, tx: ServiceProcess, qmp_dir: Path, template: str, *extra: str) -> list[str]:
    return [
        "migrate-vm",
        "--sender",
        tx.address,
        "--destination",
        rx.address,
        "--qmp-dir",
        str(qmp_dir),
        "--guest",
        "vm",
        "--destination-command",
        template,
        "--insecure",
        "--json",
        *extra,
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours is not alive; reap it
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def kill(pid: int) -> None:
    if pid and alive(pid):
        os.kill(pid, signal.SIGKILL)


def outcome(result: subprocess.CompletedProcess) -> dict:
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON outcome: rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(lines[-1])


def test_a_booted_linux_guest_runs_on_at_the_destination_with_its_memory_intact(image, hosts, shm_dir):
    rx, tx, qmp_dir = hosts
    options = qemu_guest.GuestOptions(fill_mib=32)
    qmp, console = str(qmp_dir / "vm"), shm_dir / "source.console"
    argv = qemu_guest.qemu_argv(image, shm_dir / "ram", SIZE_MIB, qmp, console, options)
    figures: dict = {}
    with qemu_guest.QemuVm(argv, qmp, console) as source:
        try:
            ready = source.wait_for(qemu_guest.READY, 180)
            checksum = ready.group(1)
            last_tick = int(source.wait_for(qemu_guest.TICK, 60, ready.end()).group(1))
            result = run_cli(*migrate_vm_args(rx, tx, qmp_dir, destination_template(image, shm_dir)), timeout=240)
            figures = outcome(result)
            assert result.returncode == 0, result.stderr
            assert figures["ok"] and figures["destination_state"] == "running"
            assert figures["source_state"] == "quit"
            source.process.wait(30)  # the source QEMU quit
            assert 0 < figures["memory_ms"] <= figures["downtime_ms"]
            assert figures["device_state_bytes"] > 0

            # The guest checks itself at the destination: it goes on counting (no reboot:
            # no new "ready" line) and its blob's md5 is the one it printed at boot.
            console = shm_dir / "destination.console"
            deadline = time.monotonic() + 60
            ticks: list[tuple[int, str]] = []
            while len(ticks) < 2 and time.monotonic() < deadline:
                ticks = [(int(n), md5) for n, md5 in qemu_guest.TICK.findall(console.read_text(errors="replace"))]
                time.sleep(0.2)
            assert len(ticks) >= 2, console.read_text(errors="replace")
            assert qemu_guest.READY.search(console.read_text(errors="replace")) is None
            assert all(md5 == checksum for _n, md5 in ticks)
            assert ticks[0][0] > last_tick

            # The sender's record of the memory migration: verified, the guest paused by it.
            channel, stub = sender_stub(tx.address)
            with channel:
                status = stub.GetMigration(pb.MigrationRequest(migration_id=figures["migration_id"]))
            assert status.state == pb.COMPLETED and status.stats.verified
            assert status.guest_state == "paused" and status.guest_run_state == "paused"
            assert status.stats.zero_pages > 0  # an idle 256 MiB guest is mostly zero pages
            shown = run_cli("migrations", "show", "--sender", tx.address, figures["migration_id"], "--insecure")
            assert "source guest" in shown.stdout and "paused (QEMU: paused)" in shown.stdout, shown.stdout
        finally:
            kill(figures.get("destination_pid", 0))


def test_a_destination_qemu_that_does_not_start_leaves_the_source_running(hosts, shm_dir):
    rx, tx, qmp_dir = hosts
    source, _memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        result = run_cli(*migrate_vm_args(rx, tx, qmp_dir, "false {qmp} {mem[mem]}"), timeout=120)
        figures = outcome(result)
        assert result.returncode == 1
        assert "destination QEMU exited" in figures["error"]
        assert figures["source_state"] == "running"
        assert source.run_state() == "running"
        assert not alive(figures["destination_pid"])


def test_a_destination_that_refuses_the_device_state_is_stopped_and_the_source_runs(hosts, shm_dir):
    """A destination with a different RAM size: QEMU refuses the incoming migration."""
    rx, tx, qmp_dir = hosts
    source, _memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        template = destination_template(None, shm_dir, size_mib=SIZE_MIB // 2)
        result = run_cli(*migrate_vm_args(rx, tx, qmp_dir, template), timeout=120)
        figures = outcome(result)
        assert result.returncode == 1
        assert "device-state migration" in figures["error"]
        assert source.run_state() == "running"
        assert figures["destination_pid"] and not alive(figures["destination_pid"])
        assert figures["destination_state"] == "stopped"


def test_a_receiver_killed_midway_leaves_the_source_running_and_no_destination(hosts, shm_dir):
    rx, tx, qmp_dir = hosts
    source, _memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        # One connection in small batches: the copy takes long enough to be cut.
        command = [
            sys.executable,
            "-m",
            "livemig.cli.main",
            *migrate_vm_args(rx, tx, qmp_dir, destination_template(None, shm_dir), "--connections", "1"),
        ]
        cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            channel, stub = sender_stub(tx.address)
            with channel:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    migrations = stub.ListMigrations(pb.ListMigrationsRequest()).migrations
                    if migrations and migrations[0].guest_state == "paused":
                        break
                    time.sleep(0.005)
                else:
                    pytest.fail("the sender never paused the guest")
                rx.process.send_signal(signal.SIGKILL)
                stdout, stderr = cli.communicate(timeout=120)
                status = stub.ListMigrations(pb.ListMigrationsRequest()).migrations[0]
        finally:
            if cli.poll() is None:
                cli.kill()
        assert cli.returncode == 1, stderr
        figures = json.loads(stdout.splitlines()[-1])
        assert "memory migration FAILED" in figures["error"]
        assert status.state == pb.FAILED and status.guest_state == "resumed"
        assert status.guest_run_state == "running"
        assert source.run_state() == "running"
        assert not figures["destination_pid"] or not alive(figures["destination_pid"])


# -- refused at the door, nothing paused ----------------------------------------------------


def start(tx: ServiceProcess, memory: Path, qmp_socket: str, **fields) -> None:
    channel, stub = sender_stub(tx.address)
    with channel:
        stub.StartMigration(
            pb.StartMigrationRequest(
                destination="127.0.0.1:9",
                regions=[pb.GuestMemoryRegion(path=str(memory))],
                qmp_socket=qmp_socket,
                **fields,
            ),
            timeout=30,
        )


def refused(tx: ServiceProcess, memory: Path, qmp_socket: str, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        start(tx, memory, qmp_socket, **fields)
    return caught.value


def test_qmp_sockets_outside_the_sender_s_directory_are_refused(hosts, shm_dir):
    _rx, tx, qmp_dir = hosts
    source, memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        (qmp_dir / "plain").write_text("not a socket")
        for name, code in [
            ("../vm.console", grpc.StatusCode.INVALID_ARGUMENT),
            (str(qmp_dir / "vm"), grpc.StatusCode.INVALID_ARGUMENT),  # absolute
            ("./vm", grpc.StatusCode.INVALID_ARGUMENT),
            ("a//vm", grpc.StatusCode.INVALID_ARGUMENT),
            ("a\nb", grpc.StatusCode.INVALID_ARGUMENT),
            ("missing", grpc.StatusCode.NOT_FOUND),
            ("plain", grpc.StatusCode.FAILED_PRECONDITION),
        ]:
            error = refused(tx, memory, name)
            assert error.code() == code, (name, error.details())
            assert str(shm_dir) not in error.details().replace(repr(name), "")  # no host path but its own
        # A symlink that leads out of the directory is refused however it is spelt.
        (qmp_dir / "out").symlink_to(shm_dir / "elsewhere.qmp")
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(shm_dir / "elsewhere.qmp"))
        server.listen()
        try:
            error = refused(tx, memory, "out")
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        finally:
            server.close()
        assert refused(tx, memory, "vm", guest_pid=source.process.pid).code() == grpc.StatusCode.INVALID_ARGUMENT
        assert source.run_state() == "running"


def test_a_sender_without_a_qmp_dir_refuses_qmp_guests(sender, shm_dir):
    memory = shm_dir / "ram"
    memory.write_bytes(b"\1" * 4096)
    error = refused(sender, memory, "vm")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "--qmp-dir" in error.details()


def test_a_socket_that_does_not_speak_qmp_is_refused(hosts, shm_dir):
    _rx, tx, qmp_dir = hosts
    memory = shm_dir / "ram"
    memory.write_bytes(b"\1" * 4096)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(qmp_dir / "mute"))
    server.listen()
    try:
        started = time.monotonic()
        error = refused(tx, memory, "mute")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "does not answer QMP" in error.details()
        assert time.monotonic() - started < 25  # bounded by the QMP timeout, not the client's
    finally:
        server.close()


def test_a_backend_that_is_not_shared_is_refused(hosts, shm_dir):
    _rx, tx, qmp_dir = hosts
    source, memory = firmware_guest(shm_dir, qmp_dir, share=False)
    with source:
        error = refused(tx, memory, "vm")
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "not share=on" in error.details()
        assert source.run_state() == "running"


def test_regions_that_are_not_the_guest_s_backends_are_refused(hosts, shm_dir):
    _rx, tx, qmp_dir = hosts
    source, memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        other = shm_dir / "other.ram"
        make_image(other, SIZE_MIB << 20, 0.1, seed=4)
        error = refused(tx, other, "vm")  # same size, another file
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "not guest 'vm'" in error.details()
        channel, stub = sender_stub(tx.address)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:  # the backend and one more region
                stub.StartMigration(
                    pb.StartMigrationRequest(
                        destination="127.0.0.1:9",
                        regions=[pb.GuestMemoryRegion(path=str(memory)), pb.GuestMemoryRegion(path=str(other))],
                        qmp_socket="vm",
                    ),
                    timeout=30,
                )
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert not stub.ListMigrations(pb.ListMigrationsRequest()).migrations  # nothing was started
        with qmp_connection(source.qmp) as qmp:
            assert qmp.run_state() == "running"


def test_the_qemu_demo_script_migrates_a_booted_guest():
    script = Path(__file__).resolve().parent.parent / "scripts" / "qemu-demo.sh"
    result = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "SIZE_MIB": "256", "FILL_MIB": "16", "CONNECTIONS": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== OK: the guest runs on at the destination" in result.stdout
    assert not list(Path("/dev/shm").glob("livemig-qemu-demo.*"))  # everything removed


def test_sigterm_to_migrate_vm_rolls_back(hosts, shm_dir):
    """SIGTERM while migrate-vm waits for the destination (memory already moved): the source
    runs again, the half-started destination is stopped, exit 143."""
    rx, tx, qmp_dir = hosts
    source, _memory = firmware_guest(shm_dir, qmp_dir)
    with source:
        slow = "sh -c " + shlex.quote("sleep 60; exec " + destination_template(None, shm_dir))
        command = [sys.executable, "-m", "livemig.cli.main", *migrate_vm_args(rx, tx, qmp_dir, slow)]
        cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            channel, stub = sender_stub(tx.address)
            with channel:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    migrations = stub.ListMigrations(pb.ListMigrationsRequest()).migrations
                    if migrations and migrations[0].state == pb.COMPLETED:
                        break
                    time.sleep(0.02)
                else:
                    pytest.fail("the memory migration never completed")
            time.sleep(0.3)  # migrate-vm is waiting for its destination now
            cli.send_signal(signal.SIGTERM)
            _stdout, stderr = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
        assert cli.returncode == 143, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr
        assert source.run_state() == "running"
        leftover = subprocess.run(["pgrep", "-f", "sleep 60; exec"], capture_output=True, text=True).stdout.split()
        assert not leftover  # the destination's start was stopped
