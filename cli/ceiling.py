"""The bare gRPC ceiling: N process pairs streaming the same messages, no scanning, no writing.

livemig's data plane is one process per connection on the sender and data-worker
processes on the receiver, so the like-for-like ceiling is N *process pairs*:
N server processes (`python -m livemig.cli.ceiling serve`) whose
TransferPages-shaped method only counts bytes, and N client processes
(`python -m livemig.cli.ceiling stream`), each with a channel of its own to its
own server, with the sender's window. `Ceiling` starts the servers once, before
anything is measured; `measure()` starts the clients, lets each connect, then
releases them together and times until the last one has its final
acknowledgement. The ratio of livemig's payload throughput to this figure says
how much the product itself costs.

The floor (issue 25) is the same pairs doing the I/O no data plane can avoid:
each client `pread`s its messages from the guest image (as a connection process
reads guest memory) and each server `pwrite`s them into a fresh file of its own
on tmpfs (as a data worker fills destination memory, pages allocated by the
write). `Floor` starts such servers, each with its own empty folder; the files
are removed after each measurement, outside the servers' measured CPU.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import cpu_seconds
from livemig.common.transport import ServiceHost, channel_options, message_limit
from livemig.sender.stream import WINDOW_BATCHES

METHOD = "/livemig.bench.Ceiling/Stream"
START_TIMEOUT_SECONDS = 30.0


def _handler(request_iterator: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
    for message in request_iterator:
        yield len(message).to_bytes(8, "little")


def _writing_handler(folder: Path) -> grpc.RpcMethodHandler:
    """Every message pwritten, one after another, into a new file of `folder` (fresh pages)."""
    streams = itertools.count()

    def handler(request_iterator: Iterator[bytes], _context: grpc.ServicerContext) -> Iterator[bytes]:
        fd = os.open(folder / f"stream-{next(streams)}", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            for message in request_iterator:
                done = os.pwrite(fd, message, offset)
                while done < len(message):
                    done += os.pwrite(fd, memoryview(message)[done:], offset + done)
                offset += len(message)
                yield len(message).to_bytes(8, "little")
        finally:
            os.close(fd)

    return grpc.stream_stream_rpc_method_handler(handler)


def serve(batch_bytes: int, write_folder: str = "") -> None:
    host = ServiceHost([], max_workers=160, max_message_bytes=message_limit(batch_bytes))
    method = _writing_handler(Path(write_folder)) if write_folder else grpc.stream_stream_rpc_method_handler(_handler)
    handlers = {"Stream": method}
    host.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("livemig.bench.Ceiling", handlers),))
    port = host.start("127.0.0.1:0")
    print(f"livemig ceiling listening on 127.0.0.1:{port}", flush=True)
    host.serve_until_signalled()


def stream(address: str, messages: int, batch_bytes: int, index: int, read_path: str = "") -> None:
    """One client process: connect, say "ready", wait for "go" on stdin, stream, say "done".
    With `read_path`, each message is pread from that file (this client's share of it,
    wrapping round), as a connection process reads guest memory; else one buffer is
    sent again and again."""
    message = b"\x01" * batch_bytes
    window = threading.Semaphore(WINDOW_BATCHES)
    source = os.open(read_path, os.O_RDONLY | os.O_CLOEXEC) if read_path else -1
    source_batches = max(os.fstat(source).st_size // batch_bytes, 1) if read_path else 1

    def produce() -> Iterator[bytes]:
        for number in range(messages):
            window.acquire()
            if source >= 0:
                yield os.pread(source, batch_bytes, (index * messages + number) % source_batches * batch_bytes)
            else:
                yield message

    with grpc.insecure_channel(address, options=channel_options(batch_bytes, index)) as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_SECONDS)
        print("ready", flush=True)
        sys.stdin.readline()
        cpu = time.process_time()
        for _ack in channel.stream_stream(METHOD)(produce()):
            window.release()
        cpu = time.process_time() - cpu
    print(f"done {cpu:.6f}", flush=True)  # CPU seconds of streaming alone (not of starting up)


def _read_line(process: subprocess.Popen[str], what: str) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"ceiling {what} process ended early (exit {process.wait()})")
    return line.strip()


class Ceiling:
    """`count` ceiling server processes, started before anything is measured."""

    floor = False  # Floor: clients read the image, servers write fresh files

    def __init__(self, count: int, batch_bytes: int) -> None:
        self.batch_bytes = batch_bytes
        self.folders: list[Path] = []
        # connections -> (client, server) CPU seconds per GiB streamed: what gRPC itself costs
        self.cpu_per_gib: dict[int, tuple[float, float]] = {}
        self.servers: list[subprocess.Popen[str]] = []
        self.addresses: list[str] = []
        try:
            for _ in range(count):
                command = [sys.executable, "-m", "livemig.cli.ceiling", "serve", str(batch_bytes)]
                if self.floor:
                    self.folders.append(Path(tempfile.mkdtemp(prefix="livemig-floor-", dir=tmpfs_dir())))
                    command.append(str(self.folders[-1]))
                server = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                self.servers.append(server)
                self.addresses.append(_read_line(server, "server").rsplit(" ", 1)[-1])
        except BaseException:
            self.close()
            raise

    def measure(self, total: int, connections: int, image: Path | None = None) -> float:
        """Aggregate payload bytes per second of `connections` concurrent process pairs
        (a Floor reads its messages from `image`)."""
        if self.floor and image is None:
            raise ValueError("the floor reads its messages from an image")
        if connections > len(self.addresses):
            raise ValueError(f"{connections} connections but {len(self.addresses)} ceiling servers")
        per_connection = max(total // self.batch_bytes // connections, 1)
        clients = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "livemig.cli.ceiling",
                    "stream",
                    self.addresses[index],
                    str(per_connection),
                    str(self.batch_bytes),
                    str(index),
                    *([str(image)] if self.floor else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for index in range(connections)
        ]
        client_cpu = 0.0
        try:
            for client in clients:
                if _read_line(client, "client") != "ready":
                    raise RuntimeError("ceiling client did not connect")
            server_cpu_before = sum(cpu_seconds(server.pid) for server in self.servers[:connections])
            started = time.perf_counter()
            for client in clients:
                assert client.stdin is not None
                client.stdin.write("go\n")
                client.stdin.flush()
            for client in clients:
                word, _, cpu = _read_line(client, "client").partition(" ")
                if word != "done":
                    raise RuntimeError("ceiling client did not finish")
                client_cpu += float(cpu)
            elapsed = time.perf_counter() - started
            server_cpu = sum(cpu_seconds(server.pid) for server in self.servers[:connections]) - server_cpu_before
        finally:
            for client in clients:
                if client.poll() is None:
                    client.kill()
                client.wait()
            for folder in self.folders:  # written pages freed outside the servers' CPU
                for written in folder.iterdir():
                    written.unlink()
        gib = per_connection * connections * self.batch_bytes / (1 << 30)
        self.cpu_per_gib[connections] = (client_cpu / gib, server_cpu / gib)
        return per_connection * connections * self.batch_bytes / elapsed

    def close(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                server.terminate()
        for server in self.servers:
            server.wait()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> Ceiling:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Floor(Ceiling):
    """Ceiling pairs that also do the unavoidable I/O: pread of the image, pwrite into fresh pages."""

    floor = True


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(int(sys.argv[2]), *sys.argv[3:4])
    elif sys.argv[1:2] == ["stream"]:
        stream(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])
