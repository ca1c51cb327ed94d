"""Bad input gets the right gRPC status and changes nothing; the services keep serving."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import grpc
import pytest

from livemig.cli.images import make_image
from livemig.common.digest import memory_digest
from livemig.common.guest_memory import open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES, channel_options
from livemig.common.wire import encode_batch
from tests.helpers import migrate, receiver_stub, sender_stub, start_mid_transfer

pytestmark = pytest.mark.e2e
MIB = 1 << 20
LAYOUT = [MemoryRange(0, MIB), MemoryRange(1 << 30, MIB)]


def prepare(stub, layout=LAYOUT, page_size=0, connections=0, migration_id="test") -> pb.PrepareMigrationResponse:
    return stub.PrepareMigration(
        pb.PrepareMigrationRequest(
            layout=pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=r.gpa, length=r.length) for r in layout]),
            page_size=page_size,
            migration_id=migration_id,
            connections=connections,
        ),
        timeout=10,
    )


def send_raw(address: str, frames: list[bytes]) -> list[pb.PageBatchAck]:
    with grpc.insecure_channel(address, options=channel_options(64 * MIB)) as channel:
        transfer = channel.stream_stream(
            "/livemig.v1.Receiver/TransferPages",
            request_serializer=None,
            response_deserializer=pb.PageBatchAck.FromString,
        )
        return list(transfer(iter(frames), timeout=30))


def allocated(session: pb.PrepareMigrationResponse) -> int:
    return sum(os.stat(r.path).st_blocks * 512 for r in session.destination_regions)


def destination_is_zero(session: pb.PrepareMigrationResponse) -> bool:
    return all(not any(Path(r.path).read_bytes()) for r in session.destination_regions)


@pytest.fixture
def session(receiver):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        prepared = prepare(stub)
        yield stub, prepared
        with contextlib.suppress(grpc.RpcError):  # free the receiver's session slot
            stub.AbortMigration(pb.AbortMigrationRequest(session_token=prepared.session_token))


def test_prepare_creates_sparse_zero_destination_under_memory_dir(receiver, module_dir, session):
    _stub, prepared = session
    assert len(prepared.destination_regions) == 2
    for region in prepared.destination_regions:
        assert Path(region.path).is_relative_to(module_dir / "destination")
        assert os.stat(region.path).st_size == region.length
    assert allocated(prepared) == 0
    assert prepared.max_batch_bytes == DEFAULT_MAX_BATCH_BYTES


def test_valid_batch_is_written_and_acknowledged(receiver, session):
    _stub, prepared = session
    frame = encode_batch(
        prepared.session_token,
        7,
        [MemoryRange(4096, 4096), MemoryRange((1 << 30) + 8192, 10)],
        [b"\x01" * 4096, b"\x02" * 10],
    )
    acks = send_raw(receiver.data_address, [frame])
    assert [(a.batch_id, a.bytes_written) for a in acks] == [(7, 4106)]
    first = Path(prepared.destination_regions[0].path).read_bytes()
    assert first[4096:8192] == b"\x01" * 4096 and not any(first[:4096]) and not any(first[8192:])


@pytest.mark.parametrize(
    ("token", "ranges", "payload", "code"),
    [
        ("", [MemoryRange(0, 4)], [b"abcd"], grpc.StatusCode.UNAUTHENTICATED),
        ("no-such-session", [MemoryRange(0, 4)], [b"abcd"], grpc.StatusCode.NOT_FOUND),
        (None, [MemoryRange(MIB - 2, 4)], [b"abcd"], grpc.StatusCode.OUT_OF_RANGE),  # runs off region 0
        (None, [MemoryRange(2 * MIB, 4)], [b"abcd"], grpc.StatusCode.OUT_OF_RANGE),  # in the gap
        (None, [MemoryRange((1 << 64) - 2, 4)], [b"abcd"], grpc.StatusCode.OUT_OF_RANGE),  # wraps 2^64
        (None, [MemoryRange(0, 4), MemoryRange(4096, 8)], [b"abcd"], grpc.StatusCode.INVALID_ARGUMENT),
        (None, [MemoryRange(0, 8), MemoryRange(4, 8)], [b"x" * 16], grpc.StatusCode.INVALID_ARGUMENT),
        (None, [MemoryRange(0, 0)], [], grpc.StatusCode.INVALID_ARGUMENT),
        # Lengths whose sum wraps 2**64 to the payload size.
        (None, [MemoryRange(0, (1 << 64) - 4), MemoryRange(1 << 30, 8)], [b"abcd"], grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_batch_is_refused_and_writes_nothing(receiver, session, token, ranges, payload, code):
    _stub, prepared = session
    # A valid first range in the same batch must not be written either.
    frame = encode_batch(prepared.session_token if token is None else token, 1, ranges, payload)
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [frame])
    assert raised.value.code() == code, raised.value.details()
    assert allocated(prepared) == 0 and destination_is_zero(prepared)


def test_malformed_bytes_are_invalid_argument(receiver, session):
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [b"\x7a\xff\xff\xff\xff"])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_batch_is_resource_exhausted(receiver, session):
    _stub, prepared = session
    payload = b"\x01" * (DEFAULT_MAX_BATCH_BYTES + 4096)
    frame = encode_batch(
        prepared.session_token, 1, [MemoryRange(0, 4096), MemoryRange(1 << 30, len(payload) - 4096)], [payload]
    )
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [frame])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert allocated(prepared) == 0


def test_batch_over_grpc_message_limit_is_resource_exhausted(receiver, session):
    _stub, prepared = session
    payload = b"\x01" * (DEFAULT_MAX_BATCH_BYTES + 2 * MIB)  # over the 1 MiB header allowance too
    frame = encode_batch(prepared.session_token, 1, [MemoryRange(0, len(payload))], [payload])
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [frame])
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_stream_cannot_switch_sessions(receiver, session):
    stub, prepared = session
    other = prepare(stub)
    frames = [
        encode_batch(prepared.session_token, 1, [MemoryRange(0, 4)], [b"abcd"]),
        encode_batch(other.session_token, 2, [MemoryRange(0, 4)], [b"abcd"]),
    ]
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, frames)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert allocated(other) == 0
    stub.AbortMigration(pb.AbortMigrationRequest(session_token=other.session_token))


def test_complete_checks_totals_and_refuses_later_transfers(receiver, session):
    stub, prepared = session
    send_raw(receiver.data_address, [encode_batch(prepared.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])])
    with pytest.raises(grpc.RpcError) as raised:
        stub.CompleteMigration(
            pb.CompleteMigrationRequest(session_token=prepared.session_token, transmitted_bytes=8, batches=1)
        )
    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    done = stub.CompleteMigration(
        pb.CompleteMigrationRequest(session_token=prepared.session_token, transmitted_bytes=4, batches=1)
    )
    assert done.written_bytes == 4 and not done.verified
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [encode_batch(prepared.session_token, 2, [MemoryRange(0, 4)], [b"efgh"])])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert Path(prepared.destination_regions[0].path).read_bytes()[:4] == b"abcd"
    with pytest.raises(grpc.RpcError) as raised:  # a completed VM's memory is never dropped
        stub.AbortMigration(pb.AbortMigrationRequest(session_token=prepared.session_token))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_digest_mismatch_is_data_loss(receiver, session, shm_dir):
    stub, prepared = session
    send_raw(receiver.data_address, [encode_batch(prepared.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])])
    wrong = shm_dir / "zero.img"
    make_image(wrong, MIB, 0.0)
    with pytest.raises(grpc.RpcError) as raised:
        stub.CompleteMigration(
            pb.CompleteMigrationRequest(
                session_token=prepared.session_token,
                transmitted_bytes=4,
                batches=1,
                digest=memory_digest(open_source_layout([(0, str(wrong)), (1 << 30, str(wrong))], 4096)),
            )
        )
    assert raised.value.code() == grpc.StatusCode.DATA_LOSS
    assert "digest" in raised.value.details()


def test_abort_removes_destination_files(receiver, session):
    stub, prepared = session
    send_raw(receiver.data_address, [encode_batch(prepared.session_token, 1, [MemoryRange(0, 4)], [b"abcd"])])
    stub.AbortMigration(pb.AbortMigrationRequest(session_token=prepared.session_token, reason="test"))
    assert not any(Path(r.path).exists() for r in prepared.destination_regions)
    assert not Path(prepared.destination_regions[0].path).parent.exists()
    with pytest.raises(grpc.RpcError) as raised:
        send_raw(receiver.data_address, [encode_batch(prepared.session_token, 2, [MemoryRange(0, 4)], [b"abcd"])])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("layout", "page_size", "connections"),
    [
        ([MemoryRange(0, 8192), MemoryRange(4096, 4096)], 0, 0),  # overlapping regions
        ([MemoryRange(0, 5000)], 0, 0),  # size not a page multiple
        ([MemoryRange(0, 4096)], 3000, 0),  # page size not a power of two
        ([], 0, 0),
        ([MemoryRange(0, 4096)], 0, 4097),  # more streams announced than any migration has
    ],
)
def test_prepare_rejects_bad_layouts(receiver, layout, page_size, connections, module_dir):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        before = set((module_dir / "destination").iterdir())
        with pytest.raises(grpc.RpcError) as raised:
            prepare(stub, layout, page_size, connections)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set((module_dir / "destination").iterdir()) == before


@pytest.mark.parametrize("migration_id", ["x" * 65, "../../etc", "id\nforged log line", "ünïcode"])
def test_prepare_rejects_a_migration_id_that_is_not_an_id(receiver, migration_id, module_dir):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        before = set((module_dir / "destination").iterdir())
        with pytest.raises(grpc.RpcError) as raised:
            prepare(stub, [MemoryRange(0, 4096)], migration_id=migration_id)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "migration_id" in raised.value.details()
        assert set((module_dir / "destination").iterdir()) == before
        unnamed = prepare(stub, [MemoryRange(0, 4096)], migration_id="")  # optional: "for logs only"
        stub.AbortMigration(pb.AbortMigrationRequest(session_token=unnamed.session_token, reason="test"))


def test_unknown_session_on_complete_and_abort(receiver):
    channel, stub = receiver_stub(receiver.address)
    with channel:
        for call, request in [
            (stub.CompleteMigration, pb.CompleteMigrationRequest(session_token="nope")),
            (stub.AbortMigration, pb.AbortMigrationRequest(session_token="nope")),
        ]:
            with pytest.raises(grpc.RpcError) as raised:
                call(request)
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND


# -- the sender's control API -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda r, img: r.ClearField("destination"), grpc.StatusCode.INVALID_ARGUMENT, "destination"),
        (lambda r, img: r.ClearField("regions"), grpc.StatusCode.INVALID_ARGUMENT, "region"),
        (lambda r, img: setattr(r, "connections", 129), grpc.StatusCode.INVALID_ARGUMENT, "connections"),
        (lambda r, img: setattr(r, "page_size", 3000), grpc.StatusCode.INVALID_ARGUMENT, "page size"),
        (lambda r, img: r.regions.add(gpa=1 << 40, path=str(img) + ".missing"), grpc.StatusCode.NOT_FOUND, "not found"),
        (lambda r, img: r.regions.add(gpa=4096, path=str(img)), grpc.StatusCode.INVALID_ARGUMENT, "overlap"),
        (
            lambda r, img: r.regions.add(gpa=1 << 40, path=str(img) + ".odd"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "multiple",
        ),
        (lambda r, img: r.regions.add(gpa=(1 << 40) + 100, path=str(img)), grpc.StatusCode.INVALID_ARGUMENT, "aligned"),
    ],
)
def test_start_migration_rejects_bad_requests(sender, receiver, shm_dir, mutate, code, words):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    (shm_dir / "guest.img.odd").write_bytes(b"x" * 5000)
    request = pb.StartMigrationRequest(
        destination=receiver.address, regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))]
    )
    mutate(request, image)
    channel, stub = sender_stub(sender.address)
    with channel, pytest.raises(grpc.RpcError) as raised:
        stub.StartMigration(request, timeout=10)
    assert raised.value.code() == code
    assert words in raised.value.details()


def test_unreachable_receiver_fails_with_reason(sender, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    status = migrate(sender.address, "127.0.0.1:1", [(0, image)])
    assert status.state == pb.FAILED
    assert "unavailable" in status.error
    assert status.stats.transmitted_bytes == 0


def test_unknown_migration_id(sender):
    channel, stub = sender_stub(sender.address)
    with channel:
        for call in (stub.GetMigration, stub.CancelMigration):
            with pytest.raises(grpc.RpcError) as raised:
                call(pb.MigrationRequest(migration_id="nope"))
            assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as raised:
            list(stub.WatchMigration(pb.MigrationRequest()))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_cancel_running_migration_aborts_receiver_session(sender, receiver, shm_dir, module_dir):
    image = shm_dir / "big.img"
    make_image(image, 256 * MIB, 1.0)
    before = set((module_dir / "destination").iterdir())
    channel, stub = sender_stub(sender.address)
    with channel:
        migration_id = start_mid_transfer(stub, receiver.address, image)
        status = stub.CancelMigration(pb.MigrationRequest(migration_id=migration_id), timeout=60)
        assert status.state == pb.CANCELLED
        assert status.stats.processed_bytes < status.stats.total_bytes
        listed = stub.ListMigrations(pb.ListMigrationsRequest()).migrations
        assert migration_id in [m.migration_id for m in listed]
    assert set((module_dir / "destination").iterdir()) == before  # destination dropped
