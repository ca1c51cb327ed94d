"""How many migrations, and connection processes, the sender runs at once.

Every connection of a migration is a process of its own on the source host, the
host whose guests are being migrated. Without a bound, StartMigration starts as
many as clients ask for: an orchestrator retrying 128-connection requests in a
loop would fork thousands of processes beside the guests. So a start beyond
--max-migrations running migrations, or beyond --max-connections connections
of running migrations together, is refused at the door with RESOURCE_EXHAUSTED,
before any file is opened. The reservation is given back when the migration's
thread has ended, after its connection processes went back to their pool.
This class is the one place that changes the capacity metrics.
"""

from __future__ import annotations

import threading

from livemig.common.worker_processes import usable_cores
from livemig.sender import metrics
from livemig.sender.defaults import DEFAULT_MAX_MIGRATIONS
from livemig.sender.errors import Reason, SenderError

# 0 for --max-connections: this many per core, and at least what one request may ask for.
CONNECTIONS_PER_CORE = 32
MIN_DEFAULT_CONNECTIONS = 128


def default_max_connections() -> int:
    return max(MIN_DEFAULT_CONNECTIONS, CONNECTIONS_PER_CORE * usable_cores())


def read_ahead_pays(connections: int, compressed: bool, cores: int | None = None) -> bool:
    """Whether a migration's connections build their next batch on a thread of their own
    (common/read_ahead.py): where this host has two cores for each connection of it, one
    to build on while the other sends, and always with compression, whose level follows
    which of the two threads waits for the other (sender/compression_pace.py). Other
    migrations running at once are not counted: a rule of thumb, not a schedule."""
    return compressed or (usable_cores() if cores is None else cores) >= 2 * connections


def _refused(limit: str, message: str) -> SenderError:
    """The refusal for want of room under `limit`, counted."""
    metrics.start_refused(limit)
    return SenderError(Reason.BUSY, message)


class Reservation:
    """One running migration's share; release() gives it back (once, whoever calls)."""

    def __init__(self, capacity: MigrationCapacity, connections: int) -> None:
        self._capacity = capacity
        self.connections = connections
        self._released = False

    def release(self) -> None:
        self._capacity.release(self)


class MigrationCapacity:
    def __init__(self, max_migrations: int = DEFAULT_MAX_MIGRATIONS, max_connections: int = 0) -> None:
        self.max_migrations = max_migrations
        self.max_connections = max_connections or default_max_connections()
        self._migrations = 0
        self._connections = 0
        self._lock = threading.Lock()
        metrics.capacity_changed(0, self.max_connections)

    def reserve(self, connections: int) -> Reservation:
        """Take room for a migration of `connections`; raises SenderError(BUSY) when there is none."""
        with self._lock:
            if connections > self.max_connections:
                raise _refused(
                    "max_connections",
                    f"{connections} connections asked for; this sender runs at most {self.max_connections} "
                    "at once (--max-connections)",
                )
            if self._migrations >= self.max_migrations:
                raise _refused(
                    "max_migrations",
                    f"the sender is running {self._migrations} migrations, its limit (--max-migrations); "
                    "try again later",
                )
            if self._connections + connections > self.max_connections:
                raise _refused(
                    "max_connections",
                    f"{connections} connections asked for, {self._connections} of {self.max_connections} "
                    "in use by running migrations (--max-connections); try again later",
                )
            self._migrations += 1
            self._connections += connections
            metrics.capacity_changed(self._connections, self.max_connections)
            return Reservation(self, connections)

    def in_use(self) -> tuple[int, int]:
        """(running migrations, their connections)."""
        with self._lock:
            return self._migrations, self._connections

    def release(self, reservation: Reservation) -> None:
        with self._lock:
            if reservation._released:
                return
            reservation._released = True
            self._migrations -= 1
            self._connections -= reservation.connections
            metrics.capacity_changed(self._connections, self.max_connections)
