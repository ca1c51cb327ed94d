"""A blocking QMP (QEMU Machine Protocol) connection, on the QEMU project's own client.

`qemu.qmp` is asynchronous; the sender's migration threads and the command line
are not. Each `QmpConnection` runs the library's `QMPClient` on an event loop of
its own, and bounds every step (connect, greeting, each command) with a timeout:
QEMU's QMP socket serves one client at a time, so a second client's connect
succeeds into the listen backlog and then waits for a greeting that only comes
when the first client leaves. Without the bound it would hang there.

Callers connect per operation and close at once (`with qmp_connection(...)`), so
the sender and an orchestrator can take turns on the same socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

DEFAULT_TIMEOUT_SECONDS = 10.0

# The library logs every refused connect and closed socket at ERROR and INFO; a caller
# polling a starting QEMU expects those, and QmpFailure carries what matters.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

Address = str | tuple[str, int]  # a unix socket path, or (host, port)


class QmpFailure(RuntimeError):
    """QMP did not answer, or answered with an error: one line for an operator."""


@dataclass(frozen=True, slots=True)
class MemoryBackend:
    """One of a guest's RAM backends, from query-memdev and its QOM properties."""

    id: str
    size: int
    share: bool
    mem_path: str  # "" when the backend is not a file (memory-backend-ram, -memfd)


class QmpConnection:
    def __init__(self, address: Address, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.address = address
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient("livemig")
        try:
            self._run(self._client.connect(address), "connect")
        except BaseException:
            self._loop.close()
            raise

    def _run(self, awaitable: Any, what: str) -> Any:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(awaitable, self.timeout))
        except TimeoutError as error:
            raise QmpFailure(
                f"QMP {what}: no answer within {self.timeout:g} s (is another client connected?)"
            ) from error
        except ExecuteError as error:
            raise QmpFailure(f"QMP {what}: {error.error.desc}") from error
        except (QMPError, OSError, EOFError) as error:
            raise QmpFailure(f"QMP {what}: {error or type(error).__name__}") from error

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command; its `return` value, or QmpFailure with QEMU's error text."""
        return self._run(self._client.execute(command, arguments or None), command)

    def __enter__(self) -> QmpConnection:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), self.timeout))
        except Exception:  # QEMU may close first, as after `quit`: nothing left to do
            pass
        finally:
            self._loop.close()

    # -- what livemig asks of a guest --------------------------------------------------

    def run_state(self) -> str:
        """QEMU's RunState: "running", "paused", "postmigrate", "inmigrate", ..."""
        return str(self.execute("query-status").get("status", ""))

    def memory_backends(self) -> list[MemoryBackend]:
        backends = []
        for memdev in self.execute("query-memdev"):
            backend_id = str(memdev.get("id", ""))
            try:
                mem_path = str(self.execute("qom-get", path=f"/objects/{backend_id}", property="mem-path"))
            except QmpFailure:
                mem_path = ""  # not a memory-backend-file
            backends.append(MemoryBackend(backend_id, int(memdev["size"]), bool(memdev.get("share")), mem_path))
        return backends

    def migrate_and_wait(self, uri: str, poll_seconds: float = 0.005, timeout: float = 600.0) -> dict[str, Any]:
        """`migrate` to uri and poll query-migrate until it ends; the final query-migrate.
        Raises QmpFailure unless it completed."""
        self.execute("migrate", uri=uri)
        deadline = self._loop.time() + timeout
        while True:
            info = self.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise QmpFailure(f"QEMU migration {status}: {info.get('error-desc', 'no reason given')}")
            if self._loop.time() > deadline:
                self.execute("migrate_cancel")
                raise QmpFailure(f"QEMU migration did not complete within {timeout:g} s")
            self._loop.run_until_complete(asyncio.sleep(poll_seconds))

    def set_capabilities(self, **capabilities: bool) -> None:
        self.execute(
            "migrate-set-capabilities",
            capabilities=[{"capability": name.replace("_", "-"), "state": on} for name, on in capabilities.items()],
        )


def qmp_connection(address: Address, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> QmpConnection:
    """A connection for one `with` block: connected now, closed at the block's end."""
    return QmpConnection(address, timeout)


def wait_for_qmp(path: str, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Wait until a starting QEMU answers on its QMP unix socket (the file appears before
    QEMU listens on it); `alive()` returning False (the process exited) ends the wait."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise QmpFailure("QEMU exited before its QMP socket answered")
        if os.path.exists(path):
            try:
                QmpConnection(path, max(0.1, min(5.0, deadline - time.monotonic()))).close()
                return
            except QmpFailure:
                pass
        if time.monotonic() > deadline:
            raise QmpFailure(f"no answer on the QMP socket within {timeout:g} s")
        time.sleep(0.01)
