"""The CLI as an operator meets it: one-line errors, exit codes, env variables, Ctrl-C, migrations commands."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import migrate, run_cli, sender_stub, wait_for

MIB = 1 << 20
TARGET = ["--sender", "127.0.0.1:1", "--destination", "127.0.0.1:2", "--memory", "/nonexistent.img", "--insecure"]


def assert_one_line_error(result: subprocess.CompletedProcess, code: int | None = None) -> str:
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(autouse=True)
def children_take_ctrl_c() -> Iterator[None]:
    """The CLIs these tests interrupt must start with SIGINT at its default. A test run
    started as a background job of a script (`cmd &` without job control) inherits
    SIGINT ignored, every CLI it starts would too (Python leaves an ignored SIGINT
    ignored), and the Ctrl-C tests would wait for nothing. A handler here is reset to
    the default in each child at exec."""
    inherited = signal.getsignal(signal.SIGINT)
    if inherited == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if inherited == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


USAGE_ERRORS = [
    ["send-migration", *TARGET, "--connections", "0"],
    ["send-migration", *TARGET, "--connections", "-1"],
    ["send-migration", *TARGET, "--connections", "129"],
    ["send-migration", *TARGET, "--page-size", "0"],
    ["send-migration", *TARGET, "--page-size", "-4096"],
    ["send-migration", *TARGET, "--downtime", "-5"],
    ["send-migration", *TARGET, "--downtime", "0"],
    ["send-migration", *TARGET, "--migration-timeout", "-1"],
    ["send-migration", *TARGET, "--migration-timeout", "12 parsecs"],
    ["send-migration", *TARGET, "--max-batch-bytes", "-1"],
    ["send-migration", *TARGET, "--max-batch-bytes", "1K"],
    ["send-migration", *TARGET, "--guest-pid", "-1"],
    ["send-migration", *TARGET, "--max-iterations", "-1"],
    ["send-migration", *TARGET, "--available-bandwidth", "-1"],
    ["send-migration", "--sender", "127.0.0.1:99999", "--destination", "x:1", "--memory", "m", "--insecure"],
    ["send-migration", "--sender", "nohostport", "--destination", "x:1", "--memory", "m", "--insecure"],
    ["send-migration", *TARGET[:4], "--memory", "m@0xZZ", "--insecure"],
    ["make-image", "--output", "/tmp/never-written.img", "--size", "0"],
    ["make-image", "--output", "/tmp/never-written.img", "--size", "-1"],
    ["make-image", "--output", "/tmp/never-written.img", "--touched", "2"],
    ["make-image", "--output", "/tmp/never-written.img", "--page-size", "0"],
    ["memtouch", "--memory", "/tmp/never-written.img", "--size", "-1"],
    ["memtouch", "--memory", "/tmp/never-written.img", "--threads", "0"],
    ["memtouch", "--memory", "/tmp/never-written.img", "--rate", "-1"],
    ["memtouch", "--memory", "/tmp/never-written.img", "--touch-ratio", "-0.1"],
    ["bench", "--size", "0"],
    ["bench", "--connections", "0"],
    ["bench", "--connections", "1,x"],
    ["bench", "--touched", "-1"],
    ["bench", "--repeat", "0"],
    ["bench", "--batch-mib", "0"],
    ["bench-live", "--downtime", "-1"],
    ["demo", "--size", "-1"],
    ["health", "--address", "127.0.0.1:1", "--timeout", "0", "--insecure"],
    ["receiver", "--listen", "127.0.0.1:99999", "--memory-dir", "/tmp/x", "--insecure"],
    ["sender", "--listen", "no-such-host.invalid:0", "--insecure"],
    ["sender", "--listen", "127.0.0.1:0", "--metrics-port", "-1", "--insecure"],
    ["sender", "--listen", "127.0.0.1:0", "--metrics-address", "no-such-host.invalid", "--insecure"],
    ["--log-level", "LOUD", "sender", "--insecure"],
    *(
        [*service, "--listen", "127.0.0.1:0", "--insecure", "--keep-buffers-seconds", value]
        for service in (["sender"], ["receiver", "--memory-dir", "/tmp/x"])
        for value in ("0", "-1", "x", "3601", "1e9")
    ),
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=[" ".join(a[:1] + a[-2:]) for a in USAGE_ERRORS])
def test_bad_option_is_a_one_line_usage_error(args):
    line = assert_one_line_error(run_cli(*args, timeout=60), code=2)
    assert "error" in line


def test_port_in_use(busy_port):
    line = assert_one_line_error(run_cli("sender", "--listen", f"127.0.0.1:{busy_port}", "--insecure"), code=1)
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line


def test_metrics_port_in_use(busy_port):
    result = run_cli("sender", "--listen", "127.0.0.1:0", "--metrics-port", str(busy_port), "--insecure")
    assert "cannot serve metrics" in assert_one_line_error(result, code=1)


def test_memory_dir_that_cannot_be_created():
    result = run_cli("receiver", "--listen", "127.0.0.1:0", "--memory-dir", "/proc/livemig-dst", "--insecure")
    assert "--memory-dir" in assert_one_line_error(result, code=1)


def test_bad_tls_files(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM file\n")
    for args in (
        ["sender", "--listen", "127.0.0.1:0", "--tls-cert", str(garbage), "--tls-key", str(garbage)],
        [
            "receiver",
            "--listen",
            "127.0.0.1:0",
            "--memory-dir",
            str(tmp_path),
            "--tls-cert",
            str(garbage),
            "--tls-key",
            str(garbage),
        ],
        ["migrations", "list", "--sender", "127.0.0.1:1", "--tls-ca", str(garbage)],
    ):
        line = assert_one_line_error(run_cli(*args), code=2)
        assert "--tls-" in line


def test_missing_guest_pid_file_is_one_line(tmp_path):
    result = run_cli("send-migration", *TARGET, "--guest-pid-file", str(tmp_path / "none.pid"), "--guest-pid-wait", "1")
    assert "none.pid" in assert_one_line_error(result, code=2)


def test_unreachable_sender_exits_3():
    result = run_cli("migrations", "list", "--sender", "127.0.0.1:1", "--insecure")
    assert "cannot reach the sender" in assert_one_line_error(result, code=3)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("livemig ")


def test_environment_variables_are_named_after_the_flags(tmp_path):
    env = {
        "LIVEMIG_SEND_MIGRATION_SENDER": "127.0.0.1:1",
        "LIVEMIG_SEND_MIGRATION_DESTINATION": "127.0.0.1:2",
        "LIVEMIG_SEND_MIGRATION_MEMORY": str(tmp_path / "a.img"),
        "LIVEMIG_SEND_MIGRATION_INSECURE": "1",
    }
    result = run_cli("send-migration", env=env)
    assert "cannot reach the sender at 127.0.0.1:1" in assert_one_line_error(result, code=3)
    # The old parameter-derived name is not a second spelling.
    env["LIVEMIG_SEND_MIGRATION_SENDER_ADDRESS"] = env.pop("LIVEMIG_SEND_MIGRATION_SENDER")
    assert "--sender" in assert_one_line_error(run_cli("send-migration", env=env), code=2)
    help_text = run_cli("send-migration", "--help").stdout
    for name in ("LIVEMIG_SEND_MIGRATION_SENDER", "LIVEMIG_SEND_MIGRATION_MIGRATION_TIMEOUT"):
        assert name in help_text.replace("\n", "").replace(" ", "")
    assert "LIVEMIG_RECEIVER_MEMORY_DIR" in run_cli("receiver", "--help").stdout


@pytest.mark.e2e
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_ctrl_c_cancels_the_migration_and_resumes_the_guest(receiver, shm_dir, signum, code):
    """Ctrl-C, and SIGTERM and SIGHUP as well (a service manager, a closed terminal)."""
    with (
        ServiceProcess("sender", []) as tx,
        GuestProcess(shm_dir / "guest.img", ["--size", "32M", "--rate", "4M", "--zero-ratio", "0.3"]) as guest,
    ):
        cli = subprocess.Popen(
            [sys.executable, "-m", "livemig.cli.main", "send-migration", "--insecure", "--sender", tx.address,
             "--destination", receiver.address, "--memory", str(guest.memory), "--dirty-log",
             "--guest-pid", str(guest.pid), "--downtime", "1ms", "--available-bandwidth", "1K",
             "--max-iterations", "100000", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            channel, stub = sender_stub(tx.address)
            with channel:
                deadline = time.monotonic() + 60
                while not (listed := stub.ListMigrations(pb.ListMigrationsRequest()).migrations):
                    assert time.monotonic() < deadline and cli.poll() is None, cli.stderr.read()
                    time.sleep(0.05)
                migration_id = listed[0].migration_id
                wait_for(stub, migration_id, lambda status: status.stats.iterations >= 2, timeout=60)
                cli.send_signal(signum)
                stdout, stderr = cli.communicate(timeout=60)
                status = stub.GetMigration(pb.MigrationRequest(migration_id=migration_id))
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        assert cli.returncode == code, stderr
        assert f"migration {migration_id} started" in stderr  # the id, whatever happens to stdout
        assert "Traceback" not in stderr
        assert status.state == pb.CANCELLED
        assert json.loads(stdout)["state"] == "CANCELLED"
        assert not guest.stopped


@pytest.mark.e2e
def test_detach_then_migrations_commands(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.5)
    common = ["--sender", sender.address, "--insecure"]
    started = run_cli("send-migration", *common, "--destination", receiver.address, "--memory", str(image), "--detach")
    assert started.returncode == 0, started.stderr
    migration_id = started.stdout.strip()
    watched = run_cli("migrations", "watch", migration_id, *common, "--json")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["state"] == "COMPLETED"
    listed = run_cli("migrations", "list", *common, "--json")
    assert listed.returncode == 0
    assert migration_id in [json.loads(line)["migration_id"] for line in listed.stdout.splitlines()]
    table = run_cli("migrations", "list", *common)
    assert migration_id in table.stdout and "COMPLETED" in table.stdout
    shown = run_cli("migrations", "show", migration_id, *common)
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout and "MiB" in shown.stdout
    cancelled = run_cli("migrations", "cancel", migration_id, *common)
    assert "FAILED_PRECONDITION" in assert_one_line_error(cancelled, code=2)
    missing = run_cli("migrations", "show", "no-such-id", *common)
    assert "NOT_FOUND" in assert_one_line_error(missing, code=2)


@pytest.mark.e2e
def test_output_is_not_wrapped_off_a_terminal(shm_dir):
    """In `docker compose logs` a row wrapped at 80 columns becomes several log lines: off a
    terminal the table's long error row stays one line, whole."""
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    with ServiceProcess("sender", []) as tx:
        result = run_cli("send-migration", "--insecure", "--sender", tx.address, "--destination", "127.0.0.1:1",
                         "--memory", str(image))  # fmt: skip
        channel, stub = sender_stub(tx.address)
        with channel:
            (status,) = stub.ListMigrations(pb.ListMigrationsRequest()).migrations
    assert result.returncode == 1
    assert len(status.error) > 80
    assert any(status.error in line for line in result.stdout.splitlines()), result.stdout


def test_netns_demo_says_how_to_point_it_at_livemig():
    script = Path(__file__).resolve().parent.parent / "scripts" / "netns-demo.sh"
    result = subprocess.run(
        ["bash", str(script)], env={"PATH": "/usr/bin:/bin", "LIVEMIG": "/nonexistent/livemig"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "LIVEMIG=/nonexistent/livemig does not run livemig" in assert_one_line_error(result, code=1)


@pytest.mark.e2e
def test_json_log_format_makes_every_service_line_json(shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    json_mode = ["--log-format", "json"]
    with (
        ServiceProcess(
            "receiver", ["--memory-dir", str(shm_dir / "dst"), "--metrics-port", "0"], global_args=json_mode
        ) as rx,
        ServiceProcess("sender", ["--metrics-port", "0"], global_args=json_mode) as tx,
    ):
        status = migrate(tx.address, rx.address, [(0, image)])
        assert status.state == pb.COMPLETED
    for process in (tx, rx):
        records = [json.loads(line) for line in process.lines]  # every line parses, the ready lines included
        messages = [record["message"] for record in records]
        assert any("listening on" in m for m in messages) and any("metrics on" in m for m in messages)
    about = [r for r in (json.loads(line) for line in tx.lines) if status.migration_id in r["message"]]
    assert about and all(r.get("migration_id") == status.migration_id for r in about)


def test_batch_size_defaults_agree():
    """The receiver's --max-batch-bytes and the bench's --batch-mib default to the
    services' own default batch (common/transport.py)."""
    from livemig.cli.main import bench, receiver
    from livemig.cli.units import Size
    from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

    receiver_default = next(p.default for p in receiver.params if p.name == "max_batch_bytes")
    assert Size().convert(receiver_default, None, None) == DEFAULT_MAX_BATCH_BYTES
    assert next(p.default for p in bench.params if p.name == "batch_mib") << 20 == DEFAULT_MAX_BATCH_BYTES


@pytest.mark.e2e
def test_ctrl_c_on_watch_stops_watching_and_leaves_the_migration_running(sender, receiver, shm_dir):
    with GuestProcess(shm_dir / "guest.img", ["--size", "16M", "--rate", "2M"]) as guest:
        common = ["--sender", sender.address, "--insecure"]
        started = run_cli(
            "send-migration", *common, "--destination", receiver.address, "--memory", str(guest.memory),
            "--dirty-log", "--guest-pid", str(guest.pid), "--downtime", "1ms", "--available-bandwidth", "1K",
            "--max-iterations", "100000", "--detach", "--json",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        migration_id = json.loads(started.stdout)["migration_id"]  # --detach --json prints JSON
        watcher = subprocess.Popen(
            [sys.executable, "-m", "livemig.cli.main", "migrations", "watch", migration_id, *common],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        channel, stub = sender_stub(sender.address)
        with channel:
            try:
                wait_for(stub, migration_id, lambda status: status.stats.iterations >= 2, timeout=60)
                # The watcher is following once it prints its first iteration line. A fixed
                # sleep was not enough with both cores busy: Python had not started yet, and
                # Ctrl-C stopped it before it said the migration goes on.
                assert select.select([watcher.stderr], [], [], 60)[0], "the watcher printed nothing in 60 s"
                first_line = watcher.stderr.readline()
                watcher.send_signal(signal.SIGINT)
                _stdout, rest = watcher.communicate(timeout=30)
                stderr = first_line + rest
                assert watcher.returncode == 130, stderr
                assert "goes on" in stderr and "Traceback" not in stderr
                status = stub.GetMigration(pb.MigrationRequest(migration_id=migration_id))
                assert status.state == pb.RUNNING
            finally:
                if watcher.poll() is None:
                    watcher.kill()
                stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
        assert not guest.stopped
