"""A loopback TCP proxy that can break one connection on demand (fault injection)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[tuple[socket.socket, socket.socket]] = []
        self.bytes_forwarded: list[int] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
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
        self.listener.close()
        for index in range(len(self.connections)):
            self.reset(index)
