"""The services under hostile requests: what a hand-written gRPC client tried, refused.

Each case of issue 9 ("The services under hostile requests") is one test here, against
real processes: the refusal's status, and that nothing on the host changed (no file
written, no process signalled, no descriptor or folder left behind, the services still
answering). docs/reliability.md lists them with the trust model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from tests.helpers import migrate, receiver_stub, sender_stub, start_guest
from tests.test_bad_input import prepare

pytestmark = pytest.mark.e2e
MIB = 1 << 20
TOP = 1 << 64


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def refused(call, request, code: grpc.StatusCode, timeout: float = 10) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=timeout)
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details()


def start_request(destination: str, *regions: pb.GuestMemoryRegion, **fields) -> pb.StartMigrationRequest:
    return pb.StartMigrationRequest(destination=destination, regions=list(regions), **fields)


@pytest.fixture
def image(shm_dir: Path) -> Path:
    path = shm_dir / "guest.img"
    make_image(path, MIB, 0.5)
    return path


# 1. A region ending exactly at 2**64 -------------------------------------------------------


def test_layout_ending_at_2_64_is_refused_and_leaks_nothing(sender, receiver, module_dir, shm_dir):
    destination = module_dir / "destination"
    channel, stub = receiver_stub(receiver.address)
    with channel:
        prepare(stub, [MemoryRange(0, 4096)])  # the folder exists and the process is warm
        fds, folders = open_fds(receiver.pid), set(destination.iterdir())
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as raised:
                prepare(stub, [MemoryRange(TOP - 4096, 4096)])
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "2**64" in raised.value.details()
        assert open_fds(receiver.pid) == fds and set(destination.iterdir()) == folders
    page = shm_dir / "page.img"
    page.write_bytes(b"\1" * 4096)
    channel, stub = sender_stub(sender.address)
    with channel:
        region = pb.GuestMemoryRegion(gpa=TOP - 4096, path=str(page))
        request = start_request(receiver.address, region)
        assert "2**64" in refused(stub.StartMigration, request, grpc.StatusCode.INVALID_ARGUMENT)
        fds = open_fds(sender.pid)  # after the first call: the connection is open
        for _ in range(20):
            refused(stub.StartMigration, request, grpc.StatusCode.INVALID_ARGUMENT)
        assert open_fds(sender.pid) == fds


# 2. A dirty log naming an unrelated file ----------------------------------------------------


def test_dirty_log_cannot_name_an_unrelated_file(sender, receiver, image, shm_dir):
    victim = shm_dir / "precious.db"
    victim.write_bytes(b"keep me" * 4096)
    content = victim.read_bytes()
    pages = image.stat().st_size // 4096
    (shm_dir / "precious.db.dirty").write_bytes(bytes(pages))  # even a map-sized victim sibling
    channel, stub = sender_stub(sender.address)
    with channel:
        free = pb.GuestMemoryRegion(gpa=0, path=str(image), dirty_log=str(victim))
        details = refused(stub.StartMigration, start_request(receiver.address, free), grpc.StatusCode.INVALID_ARGUMENT)
        assert "dirty_log" in details
        # The sibling name, but a symlink to the victim: never followed.
        os.symlink(victim, f"{image}.dirty")
        linked = pb.GuestMemoryRegion(gpa=0, path=str(image), dirty_log=f"{image}.dirty")
        refused(stub.StartMigration, start_request(receiver.address, linked), grpc.StatusCode.INVALID_ARGUMENT)
    assert victim.read_bytes() == content


# 3. A guest pid that is not the guest --------------------------------------------------------


def test_guest_pid_must_be_the_guest(sender, receiver, image):
    bystander = subprocess.Popen(["sleep", "600"])  # exists, maps no region file
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            region = pb.GuestMemoryRegion(gpa=0, path=str(image))
            for pid in (sender.pid, 1, -3):
                details = refused(
                    stub.StartMigration,
                    start_request(receiver.address, region, guest_pid=pid),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
                assert "guest_pid" in details
            details = refused(
                stub.StartMigration,
                start_request(receiver.address, region, guest_pid=bystander.pid),
                grpc.StatusCode.FAILED_PRECONDITION,
            )
            assert "does not map" in details
            assert stub.ListMigrations(pb.ListMigrationsRequest(), timeout=10) is not None  # not stopped
        assert process_state(bystander.pid) != "T" and process_state(sender.pid) != "T"
    finally:
        bystander.kill()
        bystander.wait()
    guest = start_guest(image)  # a process that maps the region is accepted, and paused
    try:
        status = migrate(sender.address, receiver.address, [(0, image)], guest_pid=guest.pid)
        assert status.state == pb.COMPLETED, status.error
        assert process_state(guest.pid) == "T"
    finally:
        guest.kill()
        guest.wait()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


# 4. Bandwidth values that overflow or mean nothing ---------------------------------------------


def test_bandwidth_must_be_finite_and_bounded_and_status_calls_keep_working(sender, receiver, image):
    channel, stub = sender_stub(sender.address)
    with channel:
        region = pb.GuestMemoryRegion(gpa=0, path=str(image))
        for value in (1e-300, float("nan"), float("inf"), 1e300, -1.0):
            request = start_request(receiver.address, region, available_bandwidth_bytes_per_second=value)
            details = refused(stub.StartMigration, request, grpc.StatusCode.INVALID_ARGUMENT)
            assert "available_bandwidth" in details
        listed = stub.ListMigrations(pb.ListMigrationsRequest(), timeout=10).migrations
        for migration in listed:
            stub.GetMigration(pb.MigrationRequest(migration_id=migration.migration_id), timeout=10)


# 5. Region paths that are not regular files ----------------------------------------------------


def test_region_must_be_a_regular_file_checked_without_blocking(sender, receiver, shm_dir):
    fifo = shm_dir / "guest.fifo"
    os.mkfifo(fifo)
    folder = shm_dir / "folder"
    folder.mkdir()
    channel, stub = sender_stub(sender.address)
    with channel:
        for path in [fifo] * 8 + [folder, Path("/dev/zero")]:
            region = pb.GuestMemoryRegion(gpa=0, path=str(path))
            details = refused(
                stub.StartMigration, start_request(receiver.address, region), grpc.StatusCode.INVALID_ARGUMENT
            )
            assert "not a regular file" in details
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        )


def test_memory_root_confines_region_files(receiver, shm_dir):
    inside, outside = shm_dir / "guests", shm_dir / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    make_image(inside / "guest.img", MIB, 0.5)
    make_image(outside / "secret.img", MIB, 0.5)
    (inside / "escape.img").symlink_to(outside / "secret.img")
    with ServiceProcess("sender", ["--memory-root", str(inside)]) as tx:
        channel, stub = sender_stub(tx.address)
        with channel:
            for path in (outside / "secret.img", inside / "escape.img", inside / ".." / "elsewhere" / "secret.img"):
                region = pb.GuestMemoryRegion(gpa=0, path=str(path))
                details = refused(
                    stub.StartMigration, start_request(receiver.address, region), grpc.StatusCode.PERMISSION_DENIED
                )
                assert "--memory-root" in details
        assert migrate(tx.address, receiver.address, [(0, inside / "guest.img")]).state == pb.COMPLETED


def test_dirty_log_dir_of_the_sender(receiver, shm_dir):
    maps = shm_dir / "maps"
    maps.mkdir()
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    (maps / "guest.img.dirty").write_bytes(bytes(MIB // 4096))
    with ServiceProcess("sender", ["--dirty-log-dir", str(maps)]) as tx:
        channel, stub = sender_stub(tx.address)
        with channel:
            sibling = pb.GuestMemoryRegion(gpa=0, path=str(image), dirty_log=f"{image}.dirty")
            refused(stub.StartMigration, start_request(receiver.address, sibling), grpc.StatusCode.INVALID_ARGUMENT)
            region = pb.GuestMemoryRegion(gpa=0, path=str(image), dirty_log=str(maps / "guest.img.dirty"))
            migration_id = stub.StartMigration(start_request(receiver.address, region), timeout=10).migration_id
            final = list(stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60))[-1]
            assert final.state == pb.COMPLETED and final.live, final.error


# 6. Watch streams exhausting the control threads -------------------------------------------------


def hold_watches(stub, migration_id: str, count: int) -> tuple[list, list[grpc.StatusCode]]:
    """Open `count` watch streams; returns the open ones and the codes of the refused ones."""
    held, codes = [], []
    for _ in range(count):
        call = stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
        try:
            next(call)  # the first status: the stream is open and holds a thread
            held.append(call)
        except grpc.RpcError as error:
            codes.append(error.code())
    return held, codes


@pytest.mark.parametrize(
    ("args", "accepted", "words"),
    [
        ([], 4, "this client already follows 4"),  # defaults: 4 per client, 16 in total
        (["--max-watch-streams", "6", "--max-watch-streams-per-client", "24"], 6, "at most 6 watch streams"),
    ],
)
def test_watch_streams_are_bounded_and_control_calls_answered(image, args, accepted, words):
    silent = socket.create_server(("127.0.0.1", 0))  # a receiver that never answers: RUNNING in setup
    try:
        with ServiceProcess("sender", args) as tx:
            channel, stub = sender_stub(tx.address)
            with channel:
                region = pb.GuestMemoryRegion(gpa=0, path=str(image))
                destination = f"127.0.0.1:{silent.getsockname()[1]}"
                migration_id = stub.StartMigration(start_request(destination, region), timeout=10).migration_id
                held, codes = hold_watches(stub, migration_id, 34)  # more than the server's 32 threads
                assert len(held) == accepted
                assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * (34 - accepted)
                with pytest.raises(grpc.RpcError) as raised:
                    next(stub.WatchMigration(pb.MigrationRequest(migration_id=migration_id), timeout=10))
                assert words in raised.value.details()
                health = health_pb2_grpc.HealthStub(channel)
                request = pb.MigrationRequest(migration_id=migration_id)
                assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == 1
                assert stub.GetMigration(request, timeout=10).state == pb.RUNNING
                assert len(stub.ListMigrations(pb.ListMigrationsRequest(), timeout=10).migrations) == 1
                assert stub.CancelMigration(request, timeout=30).state == pb.CANCELLED
                for call in held:  # every watcher sees the end, and frees its slot
                    assert list(call)[-1].state == pb.CANCELLED
                assert list(stub.WatchMigration(request, timeout=10))[-1].state == pb.CANCELLED
    finally:
        silent.close()


# 7. A destination filesystem that fills at write time ---------------------------------------------


@pytest.fixture
def small_tmpfs(shm_dir: Path):
    mount_point = shm_dir / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("write_mode", ["pwrite", "mapped"])
def test_destination_filling_up_is_a_storage_fault(sender, shm_dir, small_tmpfs, write_mode):
    """Both write modes: a mapped store into a full tmpfs would be SIGBUS; populating first
    turns it into the same one-line ENOSPC fault as pwrite's."""
    image = shm_dir / "big.img"
    make_image(image, 32 * MIB, 1.0)  # 32 MiB of non-zero pages into 8 MiB of space
    memory_dir = small_tmpfs / "dst"
    # The budget check at prepare would refuse it: promise more than the filesystem has.
    arguments = ["--memory-dir", str(memory_dir), "--max-destination-bytes", str(1 << 30), "--write-mode", write_mode]
    with ServiceProcess("receiver", arguments) as rx:
        status = migrate(sender.address, rx.address, [(0, image)], connections=1)
        assert status.state == pb.FAILED
        assert "RESOURCE_EXHAUSTED" in status.error and "no space left" in status.error, status.error
        deadline = time.monotonic() + 10
        while list(memory_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(memory_dir.iterdir()) == []  # the session's files are gone
        receiver_log = "".join(rx.lines)
    faults = [line for line in rx.lines if "no space left" in line and "aborted:" not in line]
    assert len(faults) == 1, receiver_log  # one line for the fault (and one for the sender's abort)
    assert "Traceback" not in receiver_log
    sender_log = "".join(sender.lines)
    assert "RESOURCE_EXHAUSTED" in sender_log and "reconnecting" not in sender_log  # no retry


# 8. Client strings in the logs ----------------------------------------------------------------------


def test_client_strings_cannot_forge_or_flood_log_lines(shm_dir):
    forged = "x\n2026-01-01 00:00:00,000 INFO livemig.receiver forged line"
    with ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst")]) as rx:
        channel, stub = receiver_stub(rx.address)
        with channel:
            layout = pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=0, length=4096)])
            with pytest.raises(grpc.RpcError) as raised:  # an id is an id: refused at the door
                stub.PrepareMigration(pb.PrepareMigrationRequest(layout=layout, migration_id=forged), timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            session = stub.PrepareMigration(pb.PrepareMigrationRequest(layout=layout, migration_id="ok"), timeout=10)
            stub.AbortMigration(
                pb.AbortMigrationRequest(
                    session_token=session.session_token, reason=forged + "r" * (2 * MIB) + "\nforged"
                ),
                timeout=10,
            )
        time.sleep(0.5)  # the log lines reach the pump
        lines = list(rx.lines)
    assert not any(line.startswith("2026-01-01") or line.startswith("forged") for line in lines), lines
    assert max(len(line) for line in lines) < 20_000
    assert any("\\n2026-01-01" in line for line in lines)  # escaped, still readable
