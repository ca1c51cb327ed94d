"""Bare gRPC streaming of 8 MiB messages between two processes, under channel options.

What is left of the receiver's CPU per byte is gRPC's (docs/benchmarks.md): this
asks whether any of grpcio's channel arguments moves it. A server process takes a
stream of N messages (ignoring them, answering one byte each) under the options of
one configuration; the client sends them; both report CPU seconds per GiB.
Configurations alternate, so drift on a noisy machine hits each alike.

    .venv/bin/python benchmarks/grpc_options.py [--messages 256] [--rounds 2] [--allocator]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

MESSAGE_BYTES = 8 << 20
LIMIT = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
# name -> (server options, client options)
CONFIGURATIONS: dict[str, tuple[list, list]] = {
    "default": ([], []),
    "16 MiB HTTP/2 frames": (
        [("grpc.http2.max_frame_size", (1 << 24) - 1)],
        [("grpc.http2.max_frame_size", (1 << 24) - 1)],
    ),
    "4-8 MiB TCP reads": (
        [
            ("grpc.experimental.tcp_read_chunk_size", 4 << 20),
            ("grpc.experimental.tcp_min_read_chunk_size", 4 << 20),
            ("grpc.experimental.tcp_max_read_chunk_size", 8 << 20),
        ],
        [],
    ),
    "64 KiB TCP reads": (
        [("grpc.experimental.tcp_read_chunk_size", 64 << 10), ("grpc.experimental.tcp_max_read_chunk_size", 64 << 10)],
        [],
    ),
    "zero-copy send": (
        [],
        [
            ("grpc.experimental.tcp_tx_zerocopy_enabled", 1),
            ("grpc.experimental.tcp_tx_zerocopy_send_bytes_threshold", 64 << 10),
        ],
    ),
}


def serve(options: list, port_file: Path, allocator: bool) -> None:
    if allocator:
        from livemig.common.allocator import recycle_large_blocks

        recycle_large_blocks()

    def stream(requests, _context):
        for _message in requests:
            yield b"k"

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare", {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=LIMIT + options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    sys.stdin.read()  # until the client is done
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(usage.ru_utime + usage.ru_stime), flush=True)


def measure(name: str, messages: int, allocator: bool) -> tuple[float, float, float]:
    """(GiB/s, client CPU s/GiB, server CPU s/GiB) of one configuration."""
    server_options, client_options = CONFIGURATIONS[name]
    with tempfile.TemporaryDirectory() as folder:
        port_file = Path(folder) / "port"
        args = [sys.executable, __file__, "--serve", json.dumps(server_options), str(port_file)]
        if allocator:
            args.append("--allocator")
        server = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        channel = grpc.insecure_channel(f"127.0.0.1:{port_file.read_text()}", options=LIMIT + client_options)
        call = channel.stream_stream("/bench.Bare/Stream")
        payload = os.urandom(MESSAGE_BYTES)
        for _ack in call(iter([payload] * 8)):  # warm-up
            pass
        started, cpu = time.monotonic(), time.process_time()
        for _ack in call(iter([payload] * messages)):
            pass
        wall, client_cpu = time.monotonic() - started, time.process_time() - cpu
        channel.close()
        server.stdin.close()
        server_cpu = float(server.stdout.read())  # its whole life: start-up and warm-up included
        server.wait()
    gib = messages * MESSAGE_BYTES / 2**30
    return gib / wall, client_cpu / gib, server_cpu / gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--allocator", action="store_true", help="the data workers' glibc settings in the server")
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve[0]), Path(args.serve[1]), args.allocator)
        return
    print("| configuration | GiB/s | client CPU s/GiB | server CPU s/GiB |\n|---|---|---|---|")
    for _round in range(args.rounds):
        for name in CONFIGURATIONS:
            rate, client, server = measure(name, args.messages, args.allocator)
            print(f"| {name} | {rate:.2f} | {client:.2f} | {server:.2f} |", flush=True)


if __name__ == "__main__":
    main()
