"""Data workers killed while another process holds their ports (issue 20).

A worker that died is started again on its port. If the port is taken meanwhile,
the receiver must keep trying (with a growing pause), say NOT_SERVING while no
worker serves, refuse PrepareMigration with UNAVAILABLE rather than announce no
ports, and recover by itself once the ports are free.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from tests.helpers import assert_destination_equals_source, migrate, receiver_stub
from tests.test_data_plane_processes import fork_server_children, prepare

pytestmark = pytest.mark.e2e
MIB = 1 << 20


def hold(port: int, seconds: float = 10.0) -> socket.socket:
    """Listen on `port` as soon as the dead worker's socket is gone."""
    deadline = time.monotonic() + seconds
    while True:
        held = socket.socket()
        try:
            held.bind(("127.0.0.1", port))
            held.listen()
            return held
        except OSError:
            held.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The control process stopped, so that it restarts nothing before the ports are held."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def health(stub: health_pb2_grpc.HealthStub) -> int:
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


def announced(stub) -> list[int]:
    """The data ports a prepare announces now (the session is aborted again)."""
    session = prepare(stub, [MemoryRange(0, MIB)])
    stub.AbortMigration(pb.AbortMigrationRequest(session_token=session.session_token), timeout=10)
    return sorted(session.data_ports)


def wait_until(condition, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the receiver did not get there in time"
        time.sleep(0.05)


def test_workers_killed_with_their_ports_held_recover_by_themselves(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 8 * MIB, 0.7, seed=4)
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2"]
    with ServiceProcess("receiver", args) as rx:
        ports = sorted(rx.data_ports.values())
        workers = fork_server_children(rx.pid)
        assert len(workers) == 2
        channel, stub = receiver_stub(rx.address)
        with channel:
            checks = health_pb2_grpc.HealthStub(channel)
            with stopped(rx.pid):
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                held = [hold(port) for port in ports]
            try:
                # Every worker is gone and cannot listen: not serving, and no session is
                # prepared that no stream could reach.
                wait_until(lambda: health(checks) == health_pb2.HealthCheckResponse.NOT_SERVING)
                with pytest.raises(grpc.RpcError) as raised:
                    prepare(stub, [MemoryRange(0, MIB)])
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
                time.sleep(1.5)  # several failed tries to listen
            finally:
                for socket_ in held:
                    socket_.close()
            wait_until(lambda: health(checks) == health_pb2.HealthCheckResponse.SERVING)
            wait_until(lambda: announced(stub) == ports)
        output = "".join(rx.lines)
        assert "trying again in" in output
        status = migrate(sender.address, rx.address, [(0, image)], connections=2, verify=True)
    assert status.state == pb.COMPLETED, status.error
    assert_destination_equals_source(status, [(0, image)])


def test_one_worker_with_its_port_held_leaves_the_other_announced(shm_dir):
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2"]
    with ServiceProcess("receiver", args) as rx:
        first, second = rx.data_ports[0], rx.data_ports[1]
        workers = fork_server_children(rx.pid)
        channel, stub = receiver_stub(rx.address)
        with channel:
            with stopped(rx.pid):
                victim = next(pid for pid in workers if f":{first}" in _listening(pid).split())
                os.kill(victim, signal.SIGKILL)
                held = hold(first)
            try:
                wait_until(lambda: announced(stub) == [second])
                checks = health_pb2_grpc.HealthStub(channel)
                assert health(checks) == health_pb2.HealthCheckResponse.SERVING
            finally:
                held.close()
            wait_until(lambda: announced(stub) == sorted([first, second]))


def _listening(pid: int) -> str:
    """The ports a process listens on, as ':port' words (its sockets' inodes in /proc/net)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    words = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] == "0A":  # LISTEN
                    words.append(f":{int(fields[1].rpartition(':')[2], 16)}")
    return " ".join(words)


def test_a_migration_in_flight_survives_a_worker_whose_port_is_held_for_a_while(sender, shm_dir):
    """Defect 2 in flight: the connection to the killed worker reconnects to its port (the
    retry budget is 30 s), and once the port is free the worker is back and the migration
    completes, byte-exact; it does not fail for a worker that recovers."""
    from tests.helpers import sender_stub, start_mid_transfer, watch

    image = shm_dir / "guest.img"
    make_image(image, 32 * MIB, 1.0, seed=5)
    args = ["--memory-dir", str(shm_dir / "dst"), "--data-workers", "2"]
    with ServiceProcess("receiver", args) as rx:
        first = rx.data_ports[0]
        victim = next(pid for pid in fork_server_children(rx.pid) if f":{first}" in _listening(pid).split())
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = start_mid_transfer(stub, rx.address, image, batches=3, connections=2, verify=True)
            with stopped(rx.pid):
                os.kill(victim, signal.SIGKILL)
                held = hold(first)
            time.sleep(1.5)  # the worker cannot listen, its stream cannot reconnect
            held.close()
            status = watch(stub, migration_id)
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified
    assert_destination_equals_source(status, [(0, image)])
