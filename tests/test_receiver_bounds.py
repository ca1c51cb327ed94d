"""What one session may cost the receiver, whatever its layout (issue 20, defects 5 and 6).

Regions per layout are bounded, and no process holds a descriptor per region
for a session's life: the control process closes each destination file once
created, and a data worker opens only the regions its batches touch. A small
batch costs memory in proportion to itself, never to the span it covers.
"""

from __future__ import annotations

import os
import resource
import tracemalloc
from pathlib import Path

import pytest

from livemig.common.fd_limit import raise_open_file_limit
from livemig.common.ranges import MemoryRange
from livemig.common.wire import decode_batch, encode_batch
from livemig.receiver.errors import Reason, ReceiverError
from livemig.receiver.limits import ReceiverLimits
from livemig.receiver.registry import MAX_REGIONS, SessionRegistry
from livemig.receiver.session import Session
from livemig.receiver.writer import SessionWriter

PAGE = 4096
GIB = 1 << 30


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_layout_of_more_regions_than_the_sender_sends_is_refused(shm_dir: Path):
    registry = SessionRegistry(shm_dir, ReceiverLimits(idle_timeout_seconds=3600))
    try:
        with pytest.raises(ReceiverError) as raised:
            registry.prepare([MemoryRange(i * PAGE, PAGE) for i in range(MAX_REGIONS + 1)], PAGE, "many")
        assert raised.value.reason is Reason.BAD_LAYOUT
        assert not list(shm_dir.iterdir())  # nothing created
        registry.prepare([MemoryRange(i * PAGE, PAGE) for i in range(MAX_REGIONS)], PAGE, "most")
    finally:
        registry.close()
        registry.remove_state()  # its private folder on /dev/shm (the service does this at shutdown)


@pytest.mark.parametrize("write_mode", ["pwrite", "mapped"])
def test_no_descriptor_per_region_is_held_for_a_session(shm_dir: Path, write_mode: str):
    before = open_fds()
    layout = [MemoryRange(i * 2 * PAGE, PAGE) for i in range(1000)]
    session = Session.create("s", "token", "m", shm_dir / "s", layout, PAGE, 4 << 20, write_mode=write_mode)
    assert open_fds() == before  # the control process: none held
    writer = SessionWriter(session.record)
    frame = encode_batch("token", 1, [MemoryRange(0, 4), MemoryRange(10 * PAGE, 4)], [b"abcd", b"efgh"])
    writer.apply(decode_batch(frame))
    # Two regions touched, the received-pages map and the batch-id table (Python's mmap keeps
    # a descriptor of its own): a handful, not one per region.
    assert open_fds() - before <= 8
    writer.end("completed")
    writer.release()
    assert open_fds() == before
    session.ledger.record_batch(1, 8, 0)  # as the worker reports it
    session.complete(8, 1, b"")
    assert open_fds() == before


def test_the_open_file_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_tiny_batch_over_a_huge_sparse_span_costs_what_it_carries(shm_dir: Path):
    """Nine one-byte ranges spread over 39 GiB once cost a worker 157 MiB and allocated
    10.8 MB of received-pages map; then a zero record over all of it."""
    span = 39 * GIB
    session = Session.create("s", "token", "m", shm_dir / "s", [MemoryRange(0, span)], PAGE, 4 << 20)
    writer = SessionWriter(session.record)
    ranges = [MemoryRange(i * (span // 9), 1) for i in range(9)]
    frame = encode_batch("token", 1, ranges, [bytes([i + 1]) for i in range(9)])
    batch = decode_batch(frame)
    tracemalloc.start()
    try:
        writer.apply(batch)
        peak_write = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        zero = decode_batch(encode_batch("token", 2, [], [], [MemoryRange(0, span)]))
        assert writer.apply(zero)[1] == 9 * PAGE  # the nine written pages, zeroed
        peak_zero = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_write < 1 << 20, peak_write
    assert peak_zero < 4 << 20, peak_zero
    map_allocated = os.stat(session.record.received_map).st_blocks * 512
    assert map_allocated <= 9 * PAGE, map_allocated  # one map page per range written, at most
    writer.end("aborted")
    writer.release()
    session.abort()
