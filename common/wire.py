"""PageBatch framing without copying page payload through protobuf.

A PageBatch is ordinary protobuf on the wire (see protos/livemig/v1/livemig.proto),
so any gRPC client can speak it. protobuf's Python runtime copies a `bytes` field on
every set, serialize, parse and read; for megabyte payloads those copies cost more
than the network. So the Python fast path writes the `data` field itself, first,
followed by the serialized header fields (protobuf accepts fields in any order), and
on receipt slices the payload out as a memoryview. A connection process goes one
step further (FrameInPlace): it reads guest memory straight into the message it
sends, after a `padding` field that puts the payload on an 8-byte boundary (the
zero-page scan reads pages as 64-bit words). Messages from other encoders (data
neither first nor after padding) are parsed the ordinary way. A compressed batch
(`compression`, `raw_length`) is framed by encode_batch with its compressed payload;
the in-place frame is the raw path only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from livemig.common.bytes_in_place import WritableBytes
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange, ranges_to_array

DATA_FIELD_NUMBER = pb.PageBatch.DESCRIPTOR.fields_by_name["data"].number
_DATA_TAG = bytes([(DATA_FIELD_NUMBER << 3) | 2])  # wire type 2: length-delimited
PADDING_FIELD_NUMBER = pb.PageBatch.DESCRIPTOR.fields_by_name["padding"].number
_PADDING_TAG = bytes([(PADDING_FIELD_NUMBER << 3) | 2])
DATA_ALIGNMENT = 8
GRPC_MESSAGE_PREFIX = 5  # gRPC's compressed-flag byte and 4-byte length before each message
# Room for the header fields: token, id and a range table of a worst-case batch.
HEADER_ALLOWANCE = 1 << 20


class BatchDecodeError(ValueError):
    """The bytes are not a PageBatch."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(raw: bytes | memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise BatchDecodeError("truncated or overlong varint")
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def to_pb_ranges(ranges: Sequence[MemoryRange]) -> list[pb.MemoryRange]:
    return [pb.MemoryRange(gpa=r.gpa, length=r.length) for r in ranges]


RANGE_DTYPE = np.dtype("<u8")
PACKED_RANGE_BYTES = 16


def pack_ranges(ranges: np.ndarray | Sequence[MemoryRange]) -> bytes:
    """(gpa, length) pairs as little-endian u64, as PageBatch.ranges carries them."""
    if not isinstance(ranges, np.ndarray):
        ranges = ranges_to_array(ranges)
    return np.ascontiguousarray(ranges, dtype=RANGE_DTYPE).tobytes()


def unpack_ranges(packed: bytes) -> np.ndarray:
    """k x 2 uint64 array of (gpa, length). Raises BatchDecodeError on a torn table."""
    if len(packed) % PACKED_RANGE_BYTES:
        raise BatchDecodeError(f"range table of {len(packed)} bytes is not a whole number of 16-byte ranges")
    return np.frombuffer(packed, dtype=RANGE_DTYPE).reshape(-1, 2).astype(np.uint64)


def _header(
    session_token: str,
    batch_id: int,
    ranges: np.ndarray | Sequence[MemoryRange],
    zero_ranges: np.ndarray | Sequence[MemoryRange],
    attempt: int,
    settled_below: int,
    compression: int = pb.COMPRESSION_NONE,
    raw_length: int = 0,
) -> bytes:
    """Every field of a PageBatch but data (and padding), serialized."""
    return pb.PageBatch(
        session_token=session_token,
        batch_id=batch_id,
        ranges=pack_ranges(ranges),
        zero_ranges=pack_ranges(zero_ranges),
        attempt=attempt,
        settled_below=settled_below,
        compression=compression,
        raw_length=raw_length,
    ).SerializeToString()


def encode_batch(
    session_token: str,
    batch_id: int,
    ranges: np.ndarray | Sequence[MemoryRange],
    payload: Sequence[bytes | bytearray | memoryview],
    zero_ranges: np.ndarray | Sequence[MemoryRange] = (),
    attempt: int = 0,
    settled_below: int = 0,
    compression: int = pb.COMPRESSION_NONE,
    raw_length: int = 0,
) -> bytes:
    """Serialize a PageBatch whose data is the concatenation of `payload`, copying it once.
    A compressed payload (common/compression.py) gives its method and the ranges' total."""
    header = _header(session_token, batch_id, ranges, zero_ranges, attempt, settled_below, compression, raw_length)
    data_length = sum(len(part) for part in payload)
    return b"".join((_DATA_TAG, encode_varint(data_length), *payload, header))


def aligned_prefix(data_length: int) -> bytes:
    """The padding field, then data's key and length: a multiple of DATA_ALIGNMENT
    bytes long, so data written right after it keeps the alignment of the buffer."""
    length = encode_varint(data_length)
    fill = -(len(_PADDING_TAG) + 1 + len(_DATA_TAG) + len(length)) % DATA_ALIGNMENT
    return b"".join((_PADDING_TAG, bytes([fill]), bytes(fill), _DATA_TAG, length))


class FrameInPlace:
    """A PageBatch whose page bytes are written straight into the message to be sent.

    The header (ranges, and zero ranges if any) is fixed at creation; the caller fills
    `data` (data_length bytes, every one of them) and calls finish(), or
    discard() when the chunk turned out to need another frame (it had zero pages).
    See common/bytes_in_place.py for why the message is filled in place.
    """

    __slots__ = ("_message", "data")

    def __init__(
        self,
        session_token: str,
        batch_id: int,
        ranges: np.ndarray | Sequence[MemoryRange],
        data_length: int,
        attempt: int = 0,
        settled_below: int = 0,
        zero_ranges: np.ndarray | Sequence[MemoryRange] = (),
    ) -> None:
        header = _header(session_token, batch_id, ranges, zero_ranges, attempt, settled_below)
        prefix = aligned_prefix(data_length)
        self._message = WritableBytes(len(prefix) + data_length + len(header))
        view = self._message.view
        view[: len(prefix)] = prefix
        view[len(prefix) + data_length :] = header
        self.data = view[len(prefix) : len(prefix) + data_length]

    def finish(self) -> bytes:
        self.data.release()
        return self._message.finish()

    def discard(self) -> None:
        """Drop it unsent; nothing once finished."""
        self.data.release()
        self._message.discard()


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    header: pb.PageBatch  # every field but data
    data: memoryview
    ranges: np.ndarray  # k x 2 uint64 (gpa, length)
    zero_ranges: np.ndarray


def _decoded(header: pb.PageBatch, data: memoryview) -> DecodedBatch:
    return DecodedBatch(header, data, unpack_ranges(header.ranges), unpack_ranges(header.zero_ranges))


def decode_batch(raw: bytes) -> DecodedBatch:
    """Parse a PageBatch; the payload is a view into `raw` when data comes first
    (after padding, if any)."""
    try:
        data_at = 0
        if raw[:1] == _PADDING_TAG:
            fill, after = decode_varint(raw, 1)
            data_at = after + fill
        if raw[data_at : data_at + 1] == _DATA_TAG:
            length, start = decode_varint(raw, data_at + 1)
            end = start + length
            if end <= len(raw):
                header = pb.PageBatch.FromString(memoryview(raw)[end:])
                if not header.data:  # protobuf: a later data field would win
                    return _decoded(header, memoryview(raw)[start:end])
        message = pb.PageBatch.FromString(raw)
    except DecodeError as error:
        raise BatchDecodeError(f"malformed PageBatch: {error}") from error
    data = memoryview(message.data)
    message.ClearField("data")
    return _decoded(message, data)


def is_heartbeat(batch: DecodedBatch) -> bool:
    """A sender's "still here" on a stream with nothing to send: batch id 0 (never a real
    batch's: ids start at 1), no ranges, no zero ranges, no data."""
    return batch.header.batch_id == 0 and not len(batch.ranges) and not len(batch.zero_ranges) and not len(batch.data)


def encode_heartbeat(session_token: str) -> bytes:
    return pb.PageBatch(session_token=session_token).SerializeToString()
