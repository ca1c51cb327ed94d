"""A migration whose end goes wrong still ends, and never breaks the registry."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY

from livemig.cli.images import make_image
from livemig.common.guest_memory import open_source_layout
from livemig.common.proto import livemig_pb2 as pb
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES
from livemig.sender.migration import Migration, MigrationRequest
from livemig.sender.registry import MigrationRegistry

MIB = 1 << 20


def test_an_exception_while_finishing_ends_failed_and_status_calls_keep_working(shm_dir: Path):
    image = shm_dir / "guest.img"
    make_image(image, MIB, 0.5)
    request = MigrationRequest(
        destination="127.0.0.1:1",  # nothing listens: the migration fails and is finished
        connections=1,
        skip_zero_pages=False,
        page_size=4096,
        verify=False,
        max_batch_bytes=DEFAULT_MAX_BATCH_BYTES,
    )
    migration = Migration(request, open_source_layout([(0, str(image))], 4096))
    # A figure no status field can hold, as an unbounded downtime estimate once made
    # (available_bandwidth 1e-300): finishing the migration raises while reporting it.
    migration.stats.begin_iteration(MIB, MIB // 4096)
    migration.stats.end_iteration(0, 1 << 70)
    active_before = REGISTRY.get_sample_value("livemig_sender_active_migrations") or 0.0
    registry = MigrationRegistry()
    registry.add(migration)
    migration.start(on_exit=lambda _m: None)
    migration.join(timeout=60)
    assert not migration._thread.is_alive()
    status = registry.get(migration.migration_id).status()  # answers, no exception
    assert status.state == pb.FAILED and "unavailable" in status.error, status.error
    assert status.phase == "done"
    assert [m.status().state for m in registry.all()] == [pb.FAILED]
    assert migration.layout.regions[0].fd == -1  # its files were closed
    # Counted as ended: the gauge of active migrations is back where it was.
    assert REGISTRY.get_sample_value("livemig_sender_active_migrations") == active_before
