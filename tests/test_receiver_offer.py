"""A sender facing a receiver that asks for absurd batches or ports (issue 20).

A fake receiver answers PrepareMigration with a batch limit of 1 byte, or a data
port of 70 000; the real sender must fail the migration at once with one clear
line, and abort the session, rather than crawl or dial a wrapped port.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.tls import INSECURE
from livemig.sender.connection_messages import ConnectionSpec
from livemig.sender.receiver_offer import ReceiverOfferRefused, check_offer
from tests.helpers import migrate

pytestmark = pytest.mark.e2e
MIB = 1 << 20


class OfferingReceiver(pb_grpc.ReceiverServicer):
    """Prepares with the given offer; counts aborts."""

    def __init__(self, max_batch_bytes: int, data_ports: list[int]) -> None:
        self.max_batch_bytes = max_batch_bytes
        self.data_ports = data_ports
        self.aborted = threading.Event()

    def PrepareMigration(self, request, context):
        return pb.PrepareMigrationResponse(
            session_token="t" * 43, max_batch_bytes=self.max_batch_bytes, data_ports=self.data_ports
        )

    def AbortMigration(self, request, context):
        self.aborted.set()
        return pb.AbortMigrationResponse()


def serve(servicer: OfferingReceiver) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_ReceiverServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize(
    ("max_batch_bytes", "data_ports", "expected"),
    [(1, [], "batches of 1 bytes"), (0, [70000], "data port '70000'")],
)
def test_a_receiver_offer_below_the_floor_or_outside_the_ports_fails_the_migration(
    sender, shm_dir: Path, max_batch_bytes: int, data_ports: list[int], expected: str
):
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 1.0, seed=1)
    fake = OfferingReceiver(max_batch_bytes, data_ports)
    server, port = serve(fake)
    try:
        started = time.monotonic()
        status = migrate(sender.address, f"127.0.0.1:{port}", [(0, image)], connections=2)
        took = time.monotonic() - started
    finally:
        server.stop(0)
    assert status.state == pb.FAILED
    assert expected in status.error, status.error
    assert status.stats.batches == 0
    assert fake.aborted.is_set()  # the session is given back
    assert took < 20


def spec(chunk_bytes: int, endpoint: str) -> ConnectionSpec:
    return ConnectionSpec(0, endpoint, INSECURE, "token", (), 4096, chunk_bytes, False)


def test_check_offer_bounds():
    check_offer([spec(4096, "host:1"), spec(8 << 20, "[::1]:65535")])
    for bad in [spec(4095, "host:7000"), spec(4096, "host:0"), spec(4096, "host:65536"), spec(4096, "host:x")]:
        with pytest.raises(ReceiverOfferRefused):
            check_offer([bad])
