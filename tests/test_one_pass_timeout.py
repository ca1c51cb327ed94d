"""--migration-timeout applies to a one-pass (stop-and-copy) migration too."""

from __future__ import annotations

from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.common.proto import livemig_pb2 as pb
from tests.helpers import SMALL_BATCH_BYTES, sender_stub, start_guest, watch

pytestmark = pytest.mark.e2e


def test_a_one_pass_migration_past_its_timeout_fails_and_resumes_the_guest(sender, receiver, shm_dir):
    image = shm_dir / "guest.img"
    make_image(image, 256 << 20, 1.0, seed=5)  # in 64 KiB batches: thousands of round trips
    guest = start_guest(image)  # maps the image, as a VMM would
    try:
        channel, stub = sender_stub(sender.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address,
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
                    guest_pid=guest.pid,
                    max_batch_bytes=SMALL_BATCH_BYTES,
                    timeout_ms=200,
                ),
                timeout=10,
            ).migration_id
            status = watch(stub, migration_id)
        assert status.state == pb.FAILED, status
        assert "migration timeout of 200 ms" in status.error
        assert status.stats.processed_bytes < status.stats.total_bytes
        assert status.guest_state == "resumed"
        # Logs in binary units, as the bar and the tables (README).
        assert any(f"{migration_id}: 256.0 MiB in 1 regions" in line for line in sender.lines)
        assert any("chunks of 64.0 KiB" in line for line in sender.lines)
        assert Path(f"/proc/{guest.pid}/stat").read_text().rpartition(")")[2].split()[0] != "T"
    finally:
        guest.kill()
        guest.wait()
