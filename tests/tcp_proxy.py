"""A loopback TCP proxy that can break one connection on demand (fault injection)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    """Forwards to 127.0.0.1:upstream_port.

    With mirror_host, it listens on that loopback address on the very port numbers
    of `upstream_port` and every port in `also` (a receiver's data workers, whose
    ports the receiver announces): a sender given mirror_host:port as destination
    reaches the data workers through the proxy too.
    """

    def __init__(self, upstream_port: int, also: list[int] | tuple[int, ...] = (), mirror_host: str = "") -> None:
        self.upstream_port = upstream_port
        self.host = mirror_host or "127.0.0.1"
        self.listeners: list[socket.socket] = []
        for port in [upstream_port, *also] if mirror_host else [upstream_port]:
            listener = socket.create_server((self.host, port if mirror_host else 0))
            self.listeners.append(listener)
        self.listener = self.listeners[0]
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[socket.socket, socket.socket]] = []
        self.bytes_forwarded: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        for listener, port in zip(self.listeners, [upstream_port, *also], strict=False):
            threading.Thread(target=self._accept, args=(listener, port), daemon=True).start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _accept(self, listener: socket.socket, upstream_port: int) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", upstream_port))
            with self._lock:
                index = len(self.connections)
                self.connections.append((client, upstream))
                self.bytes_forwarded.append(0)
            threading.Thread(target=self._pump, args=(client, upstream, index), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, index: int | None) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                if index is not None:
                    self.bytes_forwarded[index] += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                target.shutdown(socket.SHUT_WR)

    def busiest(self) -> int:
        """Index of the connection that has forwarded the most client bytes."""
        with self._lock:
            return max(range(len(self.bytes_forwarded)), key=self.bytes_forwarded.__getitem__)

    def reset(self, index: int) -> None:
        """Break one connection with a TCP reset on both sides."""
        with self._lock:
            pair = self.connections[index]
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def close(self) -> None:
        self._closed = True
        for listener in self.listeners:
            listener.close()
        for index in range(len(self.connections)):
            self.reset(index)
