"""The bare gRPC ceiling: the same streams and message size, no scanning, no writing.

`python -m livemig.cli.ceiling serve` runs a server whose TransferPages-shaped
method only counts bytes; `measure()` streams `total` bytes to it over N
connections with the same window as the sender. The ratio of livemig's payload
throughput to this figure says how much the product itself costs.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import grpc

from livemig.common.transport import ServiceHost, channel_options, message_limit
from livemig.sender.stream import WINDOW_BATCHES

METHOD = "/livemig.bench.Ceiling/Stream"


def _handler(request_iterator: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
    for message in request_iterator:
        yield len(message).to_bytes(8, "little")


def serve(batch_bytes: int) -> None:
    host = ServiceHost([], max_workers=160, max_message_bytes=message_limit(batch_bytes))
    handlers = {"Stream": grpc.stream_stream_rpc_method_handler(_handler)}
    host.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("livemig.bench.Ceiling", handlers),))
    port = host.start("127.0.0.1:0")
    print(f"livemig ceiling listening on 127.0.0.1:{port}", flush=True)
    host.serve_until_signalled()


def measure(address: str, total: int, batch_bytes: int, connections: int) -> float:
    """Bytes per second of payload streamed (acknowledged) over `connections` streams."""
    message = b"\x01" * batch_bytes
    per_connection = total // batch_bytes // connections
    errors: list[BaseException] = []

    def stream(index: int) -> None:
        window = threading.Semaphore(WINDOW_BATCHES)

        def messages() -> Iterator[bytes]:
            for _ in range(per_connection):
                window.acquire()
                yield message

        try:
            with grpc.insecure_channel(address, options=channel_options(batch_bytes, index)) as channel:
                call = channel.stream_stream(METHOD)(messages())
                for _ack in call:
                    window.release()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return per_connection * connections * batch_bytes / elapsed


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]))
