"""The sender's migrations by id: every running one and the latest finished ones."""

from __future__ import annotations

import threading

from livemig.sender.migration import Migration

FINISHED_MIGRATIONS_KEPT = 1024


class MigrationRegistry:
    """Migrations by id: all running ones, and the latest finished ones for GetMigration
    and ListMigrations (bounded, so a long-lived sender does not grow without end)."""

    def __init__(self, keep_finished: int = FINISHED_MIGRATIONS_KEPT) -> None:
        self._migrations: dict[str, Migration] = {}
        self._keep_finished = keep_finished
        self._lock = threading.Lock()

    def add(self, migration: Migration) -> None:
        with self._lock:
            self._migrations[migration.migration_id] = migration
            finished = [key for key, m in self._migrations.items() if m.finished]
            for key in finished[: max(0, len(finished) - self._keep_finished)]:
                del self._migrations[key]  # insertion order: the oldest go first

    def get(self, migration_id: str) -> Migration | None:
        with self._lock:
            return self._migrations.get(migration_id)

    def all(self) -> list[Migration]:
        with self._lock:
            return list(self._migrations.values())
