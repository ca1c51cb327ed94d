"""A receiver that starts again removes what a crashed one left half-written, and keeps
completed destinations (the new VM runs on them) and the sessions of receivers still running."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.receiver.orphans import MARKER, allocated_bytes
from tests.helpers import migrate, receiver_stub

pytestmark = pytest.mark.e2e
MIB = 1 << 20


def prepare(receiver: ServiceProcess) -> Path:
    """An unfinished session: prepared, one page written by hand, never completed."""
    channel, stub = receiver_stub(receiver.address)
    with channel:
        response = stub.PrepareMigration(
            pb.PrepareMigrationRequest(
                layout=pb.MemoryRangeTable(ranges=[pb.MemoryRange(gpa=0, length=4 * MIB)]), migration_id="crash-test"
            ),
            timeout=10,
        )
    region = Path(response.destination_regions[0].path)
    with region.open("r+b") as file:
        file.write(b"\1" * 4096)
    return region.parent


def test_a_restarted_receiver_removes_what_a_crash_left_and_keeps_completed_memory(sender, shm_dir):
    memory_dir = shm_dir / "destination"
    image = shm_dir / "guest.img"
    make_image(image, 4 * MIB, 0.5)
    with ServiceProcess("receiver", ["--memory-dir", str(memory_dir)]) as crashed:
        completed = migrate(sender.address, crashed.address, [(0, image)])
        assert completed.state == pb.COMPLETED, completed.error
        kept = Path(completed.destination_regions[0].path).parent
        unfinished = prepare(crashed)
        assert list(unfinished.glob(f"{MARKER}-*")) and not list(kept.glob(f"{MARKER}-*"))
        crashed.process.send_signal(signal.SIGKILL)
        crashed.process.wait(10)
    assert unfinished.exists()  # a crash removes nothing
    with ServiceProcess("receiver", ["--memory-dir", str(memory_dir)]) as restarted:
        assert not unfinished.exists()
        assert kept.exists() and any(kept.iterdir())  # the completed VM's memory stays
        assert any(unfinished.name in line and "removed the unfinished destination" in line for line in restarted.lines)
        # A session of this live receiver is left alone by another that starts on the same folder.
        live = prepare(restarted)
        with ServiceProcess("receiver", ["--memory-dir", str(memory_dir)]):
            assert live.exists()


def test_allocation_counts_every_session_s_files(tmp_path):
    for name, pages in (("a", 3), ("b", 5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "region-0.mem").write_bytes(b"\1" * 4096 * pages)
    assert allocated_bytes(tmp_path) >= 8 * 4096
    assert allocated_bytes(tmp_path / "missing") == 0
