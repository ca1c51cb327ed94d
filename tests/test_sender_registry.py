"""The sender's migration registry stays bounded."""

from __future__ import annotations

from types import SimpleNamespace

from livemig.sender.registry import MigrationRegistry


def test_sender_registry_keeps_running_and_latest_finished_migrations():
    registry = MigrationRegistry(keep_finished=2)
    migrations = [SimpleNamespace(migration_id=str(i), finished=i != 1) for i in range(5)]
    for migration in migrations:
        registry.add(migration)
    # "1" is still running and stays; of the finished ones only the newest two remain.
    assert sorted(m.migration_id for m in registry.all()) == ["1", "3", "4"]
