"""Hostile batches: random and adversarial input never crashes the receiver, never writes
outside the destination, and always gets a refusal that matches what is wrong with it."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.proto import livemig_pb2_grpc as pb_grpc
from livemig.common.ranges import MemoryRange
from livemig.common.wire import BatchDecodeError, decode_batch, encode_batch, pack_ranges
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.session import Session
from tests.local_data_plane import apply
from tests.test_bad_input import prepare, send_raw

U64 = (1 << 64) - 1
PAGE = 4096
LAYOUT = [MemoryRange(0x10000, 16 * PAGE), MemoryRange(0x100000, 8 * PAGE)]
MAX_BATCH = 64 * 1024
BATCH_IDS = itertools.count(1)

interesting_u64 = st.one_of(
    st.integers(0, U64),
    st.sampled_from([0, 1, PAGE, 0x10000, 0x10000 + 16 * PAGE - 1, 0x100000, U64, U64 - 1, 1 << 63, (1 << 63) - 1]),
    st.integers(0x10000 - 10, 0x10000 + 16 * PAGE + 10),
    st.integers(0x100000 - 10, 0x100000 + 8 * PAGE + 10),
)
small_length = st.one_of(st.integers(0, 3 * PAGE), st.sampled_from([U64, U64 - 3, 1 << 63, 1 << 32]))
range_tables = st.lists(st.tuples(interesting_u64, small_length), max_size=8)


@st.composite
def valid_tables(draw):
    """Disjoint ranges inside the layout: the batches a correct sender makes."""
    ranges = []
    for region in LAYOUT:
        offset = 0
        for _ in range(draw(st.integers(0, 3))):
            offset += draw(st.integers(0, 2 * PAGE))
            length = draw(st.integers(1, 2 * PAGE))
            if offset + length > region.length:
                break
            ranges.append((region.gpa + offset, length))
            offset += length
    return ranges


@st.composite
def batches(draw):
    """(ranges, zero ranges, payload length): valid, slightly wrong, or wild."""
    kind = draw(st.sampled_from(["valid", "valid", "wrong length", "wild"]))
    if kind == "wild":
        return draw(range_tables), draw(range_tables), draw(st.integers(0, 3 * PAGE))
    ranges = draw(valid_tables())
    total = sum(length for _, length in ranges)
    if kind == "wrong length":
        return ranges, [], draw(st.integers(0, 3 * PAGE).filter(lambda n: n != total))
    # Zero ranges that stay clear of the data ranges (a later iteration's zeroed pages).
    zero = [(gpa + length, 16) for gpa, length in ranges[:1] if (gpa + length) % PAGE < PAGE - 16]
    return ranges, zero, total


def expected_reasons(ranges, zero_ranges, payload_length) -> set[Reason]:
    """Every reason this batch deserves a refusal for; empty when it is valid."""
    reasons = set()
    if payload_length > MAX_BATCH:
        reasons.add(Reason.OVERSIZED)
    if sum(length for _, length in ranges) != payload_length:
        reasons.add(Reason.LENGTH_MISMATCH)
    spans = []
    for gpa, length in [*ranges, *zero_ranges]:
        if length == 0:
            reasons.add(Reason.MALFORMED)
            continue
        if gpa + length > U64 + 1:
            reasons.add(Reason.OUT_OF_RANGE)
            continue
        if not any(r.gpa <= gpa and gpa + length <= r.end for r in LAYOUT):
            reasons.add(Reason.OUT_OF_RANGE)
        spans.append((gpa, gpa + length))
    spans.sort()
    if any(b[0] < a[1] for a, b in itertools.pairwise(spans)):
        reasons.add(Reason.OVERLAP)
    return reasons


@pytest.fixture(scope="module", params=["pwrite", "mapped"])
def session(tmp_path_factory, request) -> Session:
    """Both ways of writing destination memory (receiver/write_mode.WriteMode)."""
    directory = tmp_path_factory.mktemp("fuzz")
    return Session.create(
        "id", "token", "fuzz", directory / "session", LAYOUT, PAGE, MAX_BATCH, write_mode=request.param
    )


def file_sizes(session: Session) -> list[int]:
    return [os.stat(r.path).st_size for r in session.destination_regions]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches())
def test_adversarial_tables_get_the_right_refusal(session, batch):
    ranges, zero_ranges, payload_length = batch
    batch_id = next(BATCH_IDS)  # unique: a repeated id is a resend and is acknowledged unwritten
    payload = bytes([batch_id % 251 + 1]) * payload_length
    raw = encode_batch("token", batch_id, pack_ranges_array(ranges), [payload], pack_ranges_array(zero_ranges))
    expected = expected_reasons(ranges, zero_ranges, payload_length)
    before = file_sizes(session)
    try:
        written, _zeroed = apply(session, decode_batch(raw))
    except ReceiverError as error:
        assert error.reason in expected, (error.reason, expected)
    else:
        assert not expected, f"accepted a batch that deserved {expected}"
        assert written == payload_length
        position = 0
        for gpa, length in ranges:  # the bytes landed where the ranges said
            region = next(r for r in session.destination_regions if r.gpa <= gpa < r.gpa + r.length)
            with open(region.path, "rb") as memory:
                memory.seek(gpa - region.gpa)
                assert memory.read(length) == payload[position : position + length]
            position += length
    assert file_sizes(session) == before  # nothing ever written past the destination's end


def pack_ranges_array(pairs):
    return np.array(pairs, dtype=np.uint64).reshape(-1, 2) if pairs else []


@settings(max_examples=1500)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(raw):
    try:
        decoded = decode_batch(raw)
    except BatchDecodeError:
        return
    # Whatever was accepted means one thing: encoding it again decodes to the same batch.
    header = decoded.header
    again = decode_batch(
        encode_batch(header.session_token, header.batch_id, decoded.ranges, [decoded.data], decoded.zero_ranges)
    )
    assert again.header.session_token == header.session_token and again.header.batch_id == header.batch_id
    assert bytes(again.data) == bytes(decoded.data) and len(decoded.data) <= len(raw)
    assert np.array_equal(again.ranges, decoded.ranges) and np.array_equal(again.zero_ranges, decoded.zero_ranges)


def test_the_batch_strategy_reaches_accepted_and_refused_batches():
    """The adversarial test above is only worth its 1 500 cases if they include batches
    that must be accepted as well as each kind of refusal: find one of each."""
    assert not expected_reasons(*find(batches(), lambda b: not expected_reasons(*b)))
    for reason in (Reason.OUT_OF_RANGE, Reason.LENGTH_MISMATCH, Reason.OVERLAP, Reason.MALFORMED):
        find(batches(), lambda b, reason=reason: reason in expected_reasons(*b))


def test_huge_range_table_is_refused_not_processed(session):
    ranges = [(0x10000 + i, 1) for i in range(60_000)]  # 60 000 ranges, ~1 MiB of table, 60 000 bytes of data
    raw = encode_batch("token", 7, pack_ranges_array(ranges), [b"x" * 59_999])
    with pytest.raises(ReceiverError) as raised:
        apply(session, decode_batch(raw))
    assert raised.value.reason is Reason.LENGTH_MISMATCH


@pytest.mark.e2e
def test_grpc_fuzz_against_a_real_receiver(receiver, module_dir):
    """Random frames through real gRPC: every answer is a status from the expected set,
    and the receiver keeps serving (a valid migration works afterwards)."""
    _grpc = grpc
    allowed = {
        _grpc.StatusCode.INVALID_ARGUMENT,
        _grpc.StatusCode.OUT_OF_RANGE,
        _grpc.StatusCode.NOT_FOUND,
        _grpc.StatusCode.UNAUTHENTICATED,
        _grpc.StatusCode.RESOURCE_EXHAUSTED,
        _grpc.StatusCode.PERMISSION_DENIED,
    }
    generator = random.Random(1234)
    channel = _grpc.insecure_channel(receiver.address)
    stub_session = prepare(
        __import__("livemig.common.proto.livemig_pb2_grpc", fromlist=["x"]).ReceiverStub(channel),
        [MemoryRange(0, 64 * PAGE)],
    )
    token = stub_session.session_token
    codes: dict[str, int] = {}
    for case in range(300):
        kind = case % 3
        if kind == 0:
            frame = bytes(generator.getrandbits(8) for _ in range(generator.randint(0, 300)))
        elif kind == 1:
            gpa, length = generator.choice([0, 64 * PAGE - 3, U64 - 2, 1 << 40]), generator.choice([0, 5, U64])
            message = pb.PageBatch(session_token=token, batch_id=case + 1, data=b"x" * generator.randint(0, 9))
            message.ranges = pack_ranges([MemoryRange(gpa, length)]) if length <= U64 else b""
            frame = message.SerializeToString()
        else:
            frame = pb.PageBatch(
                session_token=token, batch_id=case + 1, ranges=b"\x01" * generator.randint(1, 40), data=b"y"
            ).SerializeToString()
        try:
            send_raw(receiver.data_address, [frame])
            codes["OK"] = codes.get("OK", 0) + 1
        except grpc.RpcError as error:
            assert error.code() in allowed, (error.code(), error.details())
            codes[error.code().name] = codes.get(error.code().name, 0) + 1
    channel.close()
    assert sum(codes.values()) == 300 and len(codes) >= 3
    # Still serving: a clean batch into a fresh session lands.
    fresh_channel = _grpc.insecure_channel(receiver.address)
    fresh = prepare(pb_grpc.ReceiverStub(fresh_channel), [MemoryRange(0, PAGE)])
    acks = send_raw(receiver.data_address, [encode_batch(fresh.session_token, 1, [MemoryRange(0, 4)], [b"ok!!"])])
    assert acks[0].bytes_written == 4
    assert Path(fresh.destination_regions[0].path).read_bytes()[:4] == b"ok!!"
    fresh_channel.close()
