"""The acknowledgement watchdog and retry budget of a connection's stream: slow is not stalled.

No gRPC here: a ConnectionStream's clock and window are set as a real stream would
leave them, and the watchdog's judgement (`_ack_overdue`) is read back; streams that
break are stand-ins raising what gRPC raises.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest

from livemig.sender.chunks import Chunk, ChunkOutcome
from livemig.sender.stream import (
    ACK_TIMEOUT_SECONDS,
    MAX_RETRIES,
    ConnectionStream,
    Pending,
    TransferFailed,
    ack_allowance,
)
from tests.helpers import NO_BUILDER, Broken

MIB = 1 << 20


def stream_waiting_for(frames: dict[int, tuple[int, float | None]], last_ack_ago: float, started_ago: float):
    """A stream whose batches (id -> (frame bytes, seconds since first sent, None: built,
    not sent)) are unacknowledged."""
    stream = ConnectionStream(0, None, "token", NO_BUILDER, queue.Queue(), None, threading.Event())
    now = time.monotonic()
    stream._last_progress = stream._last_ack = now - last_ack_ago
    stream._stream_started = now - started_ago
    for batch_id, (size, sent_ago) in frames.items():
        sent_at = None if sent_ago is None else now - sent_ago
        stream._in_flight[batch_id] = Pending(Chunk(batch_id, (), False), bytes(size), ChunkOutcome(), sent_at=sent_at)
    return stream


def test_the_allowance_grows_with_the_batch():
    assert ack_allowance(64 << 10) == pytest.approx(ACK_TIMEOUT_SECONDS + 0.5)
    assert ack_allowance(8 * MIB) == pytest.approx(ACK_TIMEOUT_SECONDS + 64)
    assert ack_allowance(64 * MIB) > ack_allowance(8 * MIB) > ack_allowance(0) == ACK_TIMEOUT_SECONDS


def test_a_small_batch_unacknowledged_past_its_allowance_is_overdue():
    assert stream_waiting_for({1: (64 << 10, 11.0)}, last_ack_ago=30, started_ago=30)._ack_overdue() is not None
    assert stream_waiting_for({1: (64 << 10, 9.0)}, last_ack_ago=30, started_ago=30)._ack_overdue() is None


def test_a_large_batch_on_a_slow_link_is_not_overdue_within_its_allowance():
    """32 connections over 100 Mbit/s: an 8 MiB batch takes ~20 s to arrive."""
    assert stream_waiting_for({1: (8 * MIB, 25.0)}, last_ack_ago=25, started_ago=60)._ack_overdue() is None
    waited, allowed = stream_waiting_for({1: (8 * MIB, 80.0)}, last_ack_ago=80, started_ago=90)._ack_overdue()
    assert waited == pytest.approx(80, abs=1) and allowed == pytest.approx(74)


def test_a_long_scan_before_the_first_batch_is_not_a_stall():
    """All-zero memory scanned for a minute (nothing to acknowledge), then a batch: its
    clock starts when it is sent."""
    stream = stream_waiting_for({7: (64 << 10, 0.5)}, last_ack_ago=60, started_ago=60)
    assert stream._ack_overdue() is None


def test_scanning_after_a_batch_was_sent_does_not_reset_its_clock():
    """All-zero chunks scanned while a batch waits are progress for the retry budget, not
    an acknowledgement: a receiver that stopped acknowledging is still noticed."""
    stream = stream_waiting_for({2: (64 << 10, 12.0)}, last_ack_ago=12, started_ago=12)
    stream._last_progress = time.monotonic()  # a chunk that needed no batch, just now
    assert stream._ack_overdue() is not None


def test_a_resent_batch_gets_a_fresh_clock_on_a_new_stream():
    """First sent long ago on a stream that broke; the new stream started just now."""
    assert stream_waiting_for({3: (64 << 10, 40.0)}, last_ack_ago=40, started_ago=1)._ack_overdue() is None


def test_only_the_oldest_sent_batch_counts_and_unsent_ones_do_not():
    frames = {4: (64 << 10, 11.0), 5: (8 * MIB, 11.0), 6: (8 * MIB, None)}
    assert stream_waiting_for(frames, last_ack_ago=30, started_ago=30)._ack_overdue() is not None
    assert stream_waiting_for({6: (64 << 10, None)}, last_ack_ago=30, started_ago=30)._ack_overdue() is None


class BreakingStream(ConnectionStream):
    """Its streams break `breaks` times, each after `silent` seconds without an
    acknowledgement (as a slow link leaves it), then one ends well."""

    def __init__(self, breaks: int, silent: float) -> None:
        super().__init__(0, None, "token", NO_BUILDER, queue.Queue(), None, threading.Event())
        self.breaks, self.silent, self.streams = breaks, silent, 0

    def _stream(self, epoch: int) -> None:
        self.streams += 1
        if self.streams <= self.breaks:
            self._last_progress = time.monotonic() - self.silent
            raise Broken()


def test_a_stream_that_breaks_after_a_long_quiet_batch_still_reconnects():
    """A minute between acknowledgements is normal on a slow link: the retry budget runs
    from the failure, not from the last acknowledgement."""
    stream = BreakingStream(breaks=1, silent=60)
    stream._stream_with_retries()
    assert stream.streams == 2 and stream.reconnects == 1


def test_reconnects_in_a_row_without_progress_are_bounded():
    stream = BreakingStream(breaks=100, silent=60)  # every stream breaks, none makes progress
    with pytest.raises(TransferFailed, match=f"{MAX_RETRIES} reconnects"):
        stream._stream_with_retries()
