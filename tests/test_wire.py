"""PageBatch fast framing is plain protobuf on the wire, both ways."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange, ranges_from_array
from livemig.common.wire import (
    DATA_ALIGNMENT,
    BatchDecodeError,
    FrameInPlace,
    aligned_prefix,
    decode_batch,
    decode_varint,
    encode_batch,
    encode_varint,
    pack_ranges,
)

range_lists = st.lists(st.builds(MemoryRange, st.integers(0, 1 << 63), st.integers(0, 1 << 20)), max_size=5)


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(value):
    encoded = encode_varint(value)
    assert decode_varint(encoded, 0) == (value, len(encoded))


@given(st.text(max_size=40), st.integers(0, (1 << 64) - 1), range_lists, st.lists(st.binary(max_size=300), max_size=4))
def test_fast_encoding_parses_as_protobuf(token, batch_id, ranges, parts):
    raw = encode_batch(token, batch_id, ranges, parts, zero_ranges=ranges[:1])
    message = pb.PageBatch.FromString(raw)
    assert message.session_token == token and message.batch_id == batch_id
    assert message.ranges == pack_ranges(ranges)
    assert message.data == b"".join(parts)
    decoded = decode_batch(raw)
    assert bytes(decoded.data) == b"".join(parts)
    assert ranges_from_array(decoded.ranges) == ranges
    assert ranges_from_array(decoded.zero_ranges) == ranges[:1]


@given(st.text(max_size=40), range_lists, st.binary(max_size=300))
def test_protobuf_encoding_decodes(token, ranges, data):
    message = pb.PageBatch(session_token=token, batch_id=9, ranges=pack_ranges(ranges), data=data)
    decoded = decode_batch(message.SerializeToString())
    assert bytes(decoded.data) == data and decoded.header.batch_id == 9
    assert ranges_from_array(decoded.ranges) == ranges
    assert not decoded.header.data


def test_later_data_field_wins_like_protobuf():
    raw = encode_batch("t", 1, [], [b"first"]) + pb.PageBatch(data=b"second").SerializeToString()
    assert bytes(decode_batch(raw).data) == pb.PageBatch.FromString(raw).data == b"second"


def test_fast_path_payload_is_not_copied():
    raw = encode_batch("t", 1, [MemoryRange(0, 4)], [b"abcd"])
    assert decode_batch(raw).data.obj is raw


@pytest.mark.parametrize(
    "raw",
    [
        b"\x7a\xff\xff\xff",
        b"\x7a\x05ab",
        b"\x0a\x10abc",
        b"\xff\xff\xff\xff\xff",
        pb.PageBatch(ranges=b"x" * 17).SerializeToString(),  # torn range table
    ],
)
def test_malformed_bytes_raise_batch_decode_error(raw):
    with pytest.raises(BatchDecodeError):
        decode_batch(raw)


def test_packed_ranges_are_little_endian_u64_pairs():
    packed = pack_ranges([MemoryRange(0x1000, 0x2000)])
    assert packed == (0x1000).to_bytes(8, "little") + (0x2000).to_bytes(8, "little")


@given(st.integers(0, (1 << 35) - 1))
def test_aligned_prefix_keeps_the_alignment_of_its_buffer(data_length):
    prefix = aligned_prefix(data_length)
    assert len(prefix) % DATA_ALIGNMENT == 0
    if data_length <= 3000:
        assert pb.PageBatch.FromString(prefix + b"d" * data_length).data == b"d" * data_length


@given(st.text(max_size=40), st.integers(0, (1 << 64) - 1), range_lists, st.binary(min_size=1, max_size=3000))
def test_frame_in_place_is_protobuf_and_decodes_without_copy(token, batch_id, ranges, data):
    frame = FrameInPlace(token, batch_id, ranges, len(data))
    frame.data[:] = data
    raw = frame.finish()
    assert type(raw) is bytes
    message = pb.PageBatch.FromString(raw)  # any protobuf parser: padding is a field like another
    assert message.data == data and message.session_token == token and message.batch_id == batch_id
    assert message.ranges == pack_ranges(ranges) and not message.zero_ranges
    decoded = decode_batch(raw)
    assert bytes(decoded.data) == data and decoded.data.obj is raw
    assert ranges_from_array(decoded.ranges) == ranges


@given(st.integers(0, (1 << 32) - 1), st.binary(max_size=64))
def test_attempt_travels_in_both_framings(attempt, data):
    ranges = [MemoryRange(0, len(data))] if data else []
    encoded = decode_batch(encode_batch("t", 9, ranges, [data], (), attempt))
    in_place = FrameInPlace("t", 9, ranges, len(data), attempt)
    in_place.data[:] = data
    framed = decode_batch(in_place.finish())
    for batch in (encoded, framed):
        assert (batch.header.batch_id, batch.header.attempt, bytes(batch.data)) == (9, attempt, data)


def test_frame_in_place_data_is_8_byte_aligned():
    frame = FrameInPlace("t", 1, [MemoryRange(0, 4 << 20)], 4 << 20)
    try:
        assert np.frombuffer(frame.data, dtype=np.uint8).ctypes.data % DATA_ALIGNMENT == 0
    finally:
        frame.discard()


def test_padding_content_is_ignored_and_a_torn_padding_is_malformed():
    raw = b"\x2a\x03\x01\x02\x03" + encode_batch("t", 4, [MemoryRange(0, 2)], [b"hi"])  # padding, then data
    assert bytes(decode_batch(raw).data) == b"hi"
    with pytest.raises(BatchDecodeError):
        decode_batch(b"\x2a\x7f\x00")  # padding longer than the message
