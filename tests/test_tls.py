"""Mutual TLS on every channel; plaintext only when asked for by name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from livemig.cli.client import run_migration
from livemig.cli.images import files_equal, make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import Security
from tests.helpers import run_cli

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    script = str(ROOT / "scripts" / "make-certs.sh")
    subprocess.run(["bash", script, str(directory), "receiver", "sender", "client"], check=True, capture_output=True)
    subprocess.run(["bash", script, str(directory / "rogue"), "client"], check=True, capture_output=True)
    return directory


def tls_args(pki: Path, name: str) -> list[str]:
    return [
        "--tls-cert",
        str(pki / f"{name}.crt"),
        "--tls-key",
        str(pki / f"{name}.key"),
        "--tls-ca",
        str(pki / "ca.crt"),
    ]


def client(pki: Path, name: str = "client", ca: Path | None = None) -> Security:
    return Security.from_files(
        str(pki / f"{name}.crt"), str(pki / f"{name}.key"), str(ca or pki / "ca.crt"), False, server=False
    )


@pytest.fixture(scope="module")
def secured(pki: Path, module_dir: Path):
    with (
        ServiceProcess("receiver", ["--memory-dir", str(module_dir / "tls-dst"), *tls_args(pki, "receiver")]) as rx,
        ServiceProcess("sender", tls_args(pki, "sender")) as tx,
    ):
        yield tx, rx


def test_mutual_tls_migration_completes(pki, secured, shm_dir):
    tx, rx = secured
    assert "(TLS)" in "".join(rx.lines) and "(TLS)" in "".join(tx.lines)
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.5)
    request = pb.StartMigrationRequest(
        destination=f"localhost:{rx.port}",
        regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
        skip_zero_pages=True,
        verify=True,
        connections=2,
    )
    status = run_migration(f"localhost:{tx.port}", request, security=client(pki))
    assert status.state == pb.COMPLETED, status.error
    assert status.stats.verified
    assert files_equal(image, Path(status.destination_regions[0].path))


def test_cli_with_client_certificate(pki, secured, shm_dir):
    tx, rx = secured
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    result = run_cli(
        "send-migration",
        "--sender",
        f"localhost:{tx.port}",
        "--destination",
        f"localhost:{rx.port}",
        "--memory",
        str(image),
        "--json",
        *tls_args(pki, "client"),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"COMPLETED"' in result.stdout


@pytest.mark.parametrize("who", ["plaintext", "no client certificate", "certificate of another CA"])
def test_receiver_refuses_untrusted_peers(pki, secured, who):
    _tx, rx = secured
    if who == "plaintext":
        channel = grpc.insecure_channel(f"localhost:{rx.port}")
    elif who == "no client certificate":
        channel = Security(ca=(pki / "ca.crt").read_bytes()).channel(f"localhost:{rx.port}")
    else:
        rogue = pki / "rogue"
        channel = Security(
            cert=(rogue / "client.crt").read_bytes(),
            key=(rogue / "client.key").read_bytes(),
            ca=(pki / "ca.crt").read_bytes(),
        ).channel(f"localhost:{rx.port}")
    with channel, pytest.raises(grpc.RpcError) as raised:
        pb_grpc.ReceiverStub(channel).PrepareMigration(
            pb.PrepareMigrationRequest(layout=pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=0, length=4096)])),
            timeout=5,
        )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sender_refuses_a_receiver_it_does_not_trust(pki, secured, shm_dir, module_dir):
    tx, _rx = secured
    rogue = pki / "rogue"
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "make-certs.sh"), str(rogue), "receiver"], check=True, capture_output=True
    )
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    rogue_args = ["--tls-cert", str(rogue / "receiver.crt"), "--tls-key", str(rogue / "receiver.key")]
    with ServiceProcess("receiver", ["--memory-dir", str(module_dir / "rogue-dst"), *rogue_args]) as impostor:
        request = pb.StartMigrationRequest(
            destination=f"localhost:{impostor.port}", regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))]
        )
        status = run_migration(f"localhost:{tx.port}", request, security=client(pki))
    assert status.state == pb.FAILED
    assert "failed TLS verification: its certificate is not signed by the CA given with --tls-ca" in status.error
    assert not (module_dir / "rogue-dst").exists() or not any((module_dir / "rogue-dst").iterdir())


def test_sender_names_a_receiver_certificate_for_another_host(pki, shm_dir, module_dir):
    """Signed by the right CA, dialled by an address its certificate does not name."""
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    args = ["--memory-dir", str(module_dir / "other-host-dst"), "--listen", "0.0.0.0:0", *tls_args(pki, "receiver")]
    with (
        ServiceProcess("receiver", args) as rx,
        ServiceProcess("sender", tls_args(pki, "sender")) as tx,
    ):
        request = pb.StartMigrationRequest(
            destination=f"127.0.0.2:{rx.port}", regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))]
        )
        status = run_migration(f"localhost:{tx.port}", request, security=client(pki))
    assert status.state == pb.FAILED
    assert "failed TLS verification: its certificate does not name the host dialled" in status.error, status.error


def test_plaintext_needs_to_be_asked_for():
    result = run_cli("receiver", "--listen", "127.0.0.1:0", "--memory-dir", "/tmp/x", timeout=30)
    assert result.returncode != 0
    assert "--insecure" in result.stderr and "refusing to serve plaintext" in result.stderr


def test_plaintext_warns(receiver):
    assert "plaintext gRPC (--insecure)" in "".join(receiver.lines)


def test_session_belongs_to_the_certificate_that_prepared_it(pki, secured):
    """Another trusted client holding the token still cannot write into the session."""
    from livemig.common.ranges import MemoryRange
    from livemig.common.transport import channel_options
    from livemig.common.wire import encode_batch

    _tx, rx = secured
    target = f"localhost:{rx.port}"
    with client(pki, "sender").channel(target) as owner_channel:
        prepared = pb_grpc.ReceiverStub(owner_channel).PrepareMigration(
            pb.PrepareMigrationRequest(layout=pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=0, length=4096)])),
            timeout=5,
        )
    frame = encode_batch(prepared.session_token, 1, [MemoryRange(0, 4)], [b"evil"])
    data_target = f"localhost:{prepared.data_ports[0]}"  # page streams go to a data worker
    with client(pki, "client").channel(data_target, channel_options(1 << 20)) as other:
        transfer = other.stream_stream("/livemig.v1.Receiver/TransferPages", request_serializer=None)
        with pytest.raises(grpc.RpcError) as raised:
            list(transfer(iter([frame]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not any(Path(prepared.destination_regions[0].path).read_bytes())
    with client(pki, "sender").channel(data_target, channel_options(1 << 20)) as owner_channel:
        transfer = owner_channel.stream_stream("/livemig.v1.Receiver/TransferPages", request_serializer=None)
        assert len(list(transfer(iter([frame]), timeout=10))) == 1  # the owner may
    with client(pki, "sender").channel(target) as owner_channel:
        pb_grpc.ReceiverStub(owner_channel).AbortMigration(
            pb.AbortMigrationRequest(session_token=prepared.session_token)
        )
