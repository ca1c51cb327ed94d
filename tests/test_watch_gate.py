"""Watch stream admission: per client and in total, slots given back."""

from __future__ import annotations

import pytest

from livemig.sender.config import SenderConfig
from livemig.sender.errors import Reason, SenderError
from livemig.sender.server import CONTROL_WORKERS, RESERVED_WORKERS, build_sender
from livemig.sender.watch import WatchGate


def test_per_client_and_total_bounds():
    gate = WatchGate(max_total=3, max_per_client=2)
    gate.acquire("a")
    gate.acquire("a")
    with pytest.raises(SenderError) as raised:
        gate.acquire("a")
    assert raised.value.reason is Reason.BUSY and "already follows 2" in raised.value.message
    gate.acquire("b")
    with pytest.raises(SenderError) as raised:
        gate.acquire("c")  # a new client, but the sender is full
    assert "at most 3 watch streams" in raised.value.message
    gate.release("a")
    gate.acquire("c")
    assert gate.open_streams() == 3


def test_watch_limit_leaves_threads_for_other_calls():
    with pytest.raises(ValueError, match="stay free"):
        build_sender(SenderConfig(max_watch_streams=CONTROL_WORKERS - RESERVED_WORKERS + 1))
