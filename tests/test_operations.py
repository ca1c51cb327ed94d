"""What operators rely on: health, reflection, graceful SIGTERM, JSON logs, env configuration."""

from __future__ import annotations

import json
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import migrate, run_cli, sender_stub, start_mid_transfer

pytestmark = pytest.mark.e2e
MIB = 1 << 20


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_and_reflection(sender, receiver):
    for process, name in ((sender, "livemig.v1.Sender"), (receiver, "livemig.v1.Receiver")):
        assert health_status(process.address) == health_pb2.HealthCheckResponse.SERVING
        assert health_status(process.address, name) == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(process.address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert name in services and "grpc.health.v1.Health" in services
        result = run_cli("health", "--insecure", "--address", process.address, "--service", name)
        assert result.returncode == 0 and "SERVING" in result.stdout


def test_health_command_fails_on_a_dead_address():
    result = run_cli("health", "--insecure", "--address", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 1


def test_sigterm_to_sender_cancels_its_migration_and_exits(receiver, shm_dir, module_dir):
    image = shm_dir / "big.img"
    make_image(image, 256 * MIB, 1.0)
    before = set((module_dir / "destination").iterdir())
    tx = ServiceProcess("sender", [])
    channel, stub = sender_stub(tx.address)
    with channel:
        migration_id = start_mid_transfer(stub, receiver.address, image)
    tx.process.send_signal(signal.SIGTERM)
    assert tx.process.wait(30) == 0
    output = "".join(tx.lines)
    assert "draining" in output and f"migration {migration_id} CANCELLED" in output
    assert set((module_dir / "destination").iterdir()) == before  # the receiver session was aborted


def test_sigterm_to_receiver_drains_and_exits(shm_dir):
    rx = ServiceProcess("receiver", ["--memory-dir", str(shm_dir / "dst")])
    assert health_status(rx.address) == health_pb2.HealthCheckResponse.SERVING
    rx.process.send_signal(signal.SIGTERM)
    assert rx.process.wait(30) == 0
    assert "draining" in "".join(rx.lines)


def test_json_logs_carry_the_migration_id_and_env_configures(shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    with (
        ServiceProcess(
            "receiver",
            [],
            global_args=["--log-format", "json"],
            env={"LIVEMIG_RECEIVER_MEMORY_DIR": str(shm_dir / "from-env")},
        ) as rx,
        ServiceProcess("sender", [], global_args=["--log-format", "json"]) as tx,
    ):
        status = migrate(tx.address, rx.address, [(0, image)], skip_zero_pages=True)
        assert status.state == pb.COMPLETED
        time.sleep(0.2)
        logs = {"sender": list(tx.lines), "receiver": list(rx.lines)}
    assert all(r.path.startswith(str(shm_dir / "from-env")) for r in status.destination_regions)
    for role, lines in logs.items():
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert records, role
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        tagged = [r for r in records if r.get("migration_id") == status.migration_id]
        assert tagged, f"no {role} log line carries the migration id"
