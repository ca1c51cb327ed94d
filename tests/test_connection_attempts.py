"""Each try of a connection's stream is a real connection attempt, on a channel of its own.

Once a connection attempt fails, gRPC fails every call on that channel at once with
the cached error while it backs off. So retries on one channel after a 5 s handshake
timeout spent all 5 tries of a connection in 4 s (a 128-connection migration on 2
busy cores failed so in CI). A listener that accepts and never answers stands in for a
handshake that does not finish in time.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from livemig.common.transport import CONNECT_TIMEOUT_SECONDS, channel_options
from livemig.sender.stream import MAX_RETRIES, ConnectionStream, TransferFailed
from tests.helpers import NO_BUILDER, Broken


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def failed_call(channel: grpc.Channel) -> float:
    """One stream call that fails as unavailable; how long it took."""
    call = channel.stream_stream("/livemig.test/Nothing", request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        for _ in call(iter([b"x"])):
            pass
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    return time.monotonic() - started


def test_a_retry_on_the_same_channel_makes_no_attempt_and_a_fresh_channel_does(silent_port):
    target = f"127.0.0.1:{silent_port}"
    options = channel_options(1 << 20, 1)
    with grpc.insecure_channel(target, options=options) as channel:
        assert failed_call(channel) >= CONNECT_TIMEOUT_SECONDS - 1  # a real attempt, timed out
        assert failed_call(channel) < CONNECT_TIMEOUT_SECONDS - 1  # the cached failure, no attempt
    with grpc.insecure_channel(target, options=options) as fresh:
        assert failed_call(fresh) >= CONNECT_TIMEOUT_SECONDS - 1  # a real attempt again


class Channel:
    """A channel whose every call breaks as an unreachable peer's would."""

    def __init__(self) -> None:
        self.closed = False

    def stream_stream(self, *_args, **_kwargs):
        def call(*_args, **_kwargs):
            raise Broken()

        return call

    def close(self) -> None:
        self.closed = True


def test_every_try_of_a_stream_opens_its_own_channel_and_closes_the_last():
    channels: list[Channel] = []

    def connect() -> Channel:
        assert all(channel.closed for channel in channels)  # the previous try's is closed first
        channels.append(Channel())
        return channels[-1]

    stream = ConnectionStream(0, connect, "token", NO_BUILDER, queue.Queue(), None, threading.Event())
    with pytest.raises(TransferFailed, match=f"{MAX_RETRIES} reconnects"):
        stream.run()
    assert len(channels) == MAX_RETRIES + 1  # the first try and every reconnect
    assert all(channel.closed for channel in channels)
