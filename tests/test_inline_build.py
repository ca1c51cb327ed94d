"""A connection that builds its batches on the sending thread (no read-ahead thread).

Where the sender's host has fewer than two cores per connection, a connection builds
each batch when the stream asks for it (sender/capacity.read_ahead_pays,
common/read_ahead.Inline). It must still do all a read-ahead connection does: send
heartbeats while a long all-zero scan has nothing to send, and stream every batch.
Both modes run here against a small receiver that records what arrives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.ranges import MemoryRange
from livemig.common.read_ahead import Inline
from livemig.common.transfer_rpc import RECEIVER_SERVICE, TRANSFER_PAGES
from livemig.common.wire import decode_batch, encode_batch, is_heartbeat
from livemig.sender.batch_builder import BuiltBatch
from livemig.sender.capacity import read_ahead_pays
from livemig.sender.chunks import Chunk, ChunkOutcome, ChunkReport
from livemig.sender.stream import ConnectionStream

TOKEN = "token"
ZERO_CHUNKS = 4
SCAN_SECONDS = 0.3  # each all-zero chunk takes this long to scan: longer than the heartbeat interval
HEARTBEAT_SECONDS = 0.05
# At least this many heartbeats while the zero chunks are scanned. Built on the sending
# thread, one follows every zero chunk (each scan outlasts the interval); with the
# read-ahead thread one follows each 0.2 s poll that finds nothing (about 6 in 1.2 s).
MIN_HEARTBEATS = ZERO_CHUNKS - 1


class Recorder:
    """TransferPages that acknowledges every batch and counts heartbeats."""

    def __init__(self) -> None:
        self.heartbeats = 0
        self.batches: list[int] = []

    def transfer(self, requests: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[pb.PageBatchAck]:
        for raw in requests:
            batch = decode_batch(raw)
            if is_heartbeat(batch):
                self.heartbeats += 1
                continue
            self.batches.append(batch.header.batch_id)
            yield pb.PageBatchAck(batch_id=batch.header.batch_id, bytes_written=len(batch.data))


@pytest.fixture
def receiver() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.stream_stream_rpc_method_handler(
        recorder.transfer, request_deserializer=None, response_serializer=pb.PageBatchAck.SerializeToString
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(RECEIVER_SERVICE, {TRANSFER_PAGES: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield recorder, f"127.0.0.1:{port}"
    server.stop(None)


class SlowZeroBuilder:
    """The first ZERO_CHUNKS chunks are all zero and slow to scan (no batch); the rest hold
    four bytes each. Records the thread each chunk was built on."""

    compressor = None

    def __init__(self) -> None:
        self.threads: list[str] = []

    def build(self, chunk: Chunk) -> BuiltBatch:
        self.threads.append(threading.current_thread().name)
        outcome = ChunkOutcome(chunk_bytes=4096)
        if chunk.chunk_id <= ZERO_CHUNKS:
            time.sleep(SCAN_SECONDS)
            outcome.zero_bytes, outcome.zero_pages = 4096, 1
            return BuiltBatch(chunk, None, outcome)
        frame = encode_batch(TOKEN, chunk.chunk_id, [MemoryRange(0, 4)], [b"abcd"])
        outcome.transmitted_bytes = outcome.wire_bytes = 4
        outcome.batches = 1
        return BuiltBatch(chunk, frame, outcome)


class Reports:
    def __init__(self) -> None:
        self.chunk_ids: list[int] = []

    def chunk_done(self, report: ChunkReport, more_coming: bool) -> None:
        self.chunk_ids.append(report.chunk_id)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_connection_heartbeats_through_a_long_zero_scan_and_sends_every_batch(receiver, read_ahead):
    recorder, address = receiver
    inbox: queue.Queue[Chunk | None] = queue.Queue()
    for chunk_id in range(1, ZERO_CHUNKS + 3):
        inbox.put(Chunk(chunk_id, (MemoryRange((chunk_id - 1) * 4096, 4096),), zero_records=False))
    inbox.put(None)
    builder, reports = SlowZeroBuilder(), Reports()
    stream = ConnectionStream(
        0,
        lambda: grpc.insecure_channel(address),
        TOKEN,
        builder,
        inbox,
        reports,
        threading.Event(),
        heartbeat_seconds=HEARTBEAT_SECONDS,
        read_ahead=read_ahead,
    )
    stream.run()
    assert recorder.batches == [ZERO_CHUNKS + 1, ZERO_CHUNKS + 2]
    assert sorted(reports.chunk_ids) == list(range(1, ZERO_CHUNKS + 3))  # the zero chunks too, once each
    assert recorder.heartbeats >= MIN_HEARTBEATS
    built_on_the_build_thread = {name == "connection-0-build" for name in builder.threads}
    assert built_on_the_build_thread == {read_ahead}


def test_inline_pulls_on_the_callers_thread_one_caller_at_a_time():
    started, release = threading.Event(), threading.Event()
    closed = []

    def items() -> Iterator[int]:
        try:
            yield 1
            started.set()
            release.wait(10)
            yield 2
        finally:
            closed.append(True)

    inline = Inline(items())
    assert inline.next() == 1
    pulling = threading.Thread(target=lambda: inline.next())
    pulling.start()
    assert started.wait(10)
    with pytest.raises(queue.Empty):  # another caller is still pulling: nothing ready for this one
        inline.next(timeout=0.05)
    inline.close(join_seconds=0.05)  # still pulling: left alone
    assert not closed
    release.set()
    pulling.join(10)
    inline.close(join_seconds=1)
    assert closed == [True]  # the generator's finally ran


@pytest.mark.parametrize(
    "connections, cores, expected", [(1, 2, True), (2, 2, False), (2, 4, True), (8, 16, True), (9, 16, False)]
)
def test_connections_read_ahead_only_with_two_cores_each(connections, cores, expected):
    assert read_ahead_pays(connections, False, cores) is expected
    # Compression's pace reads which thread waits for the other: it always has both.
    assert read_ahead_pays(connections, True, cores) is True
