"""No guest left paused: a sender that dies while a guest is paused leaves a record,
and the next sender (or `livemig guest resume`) resumes the guest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.common.process_identity import process_start
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.pause_records import PauseRecord, PauseRecords, resume
from tests.helpers import run_cli, sender_stub, wait_for


@pytest.fixture
def stopped_process() -> Iterator[subprocess.Popen]:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    os.kill(child.pid, signal.SIGSTOP)
    yield child
    child.kill()
    child.wait()


def state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_a_record_of_a_live_sender_is_left_and_of_a_dead_one_resumed(tmp_path, stopped_process):
    records = PauseRecords(tmp_path)
    pid = stopped_process.pid
    records.write(PauseRecord("m1", "pid", pid=pid, pid_start=process_start(pid)))
    assert records.orphans() == []  # written by this process, which is alive
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = tmp_path / "m1.paused.json"
    path.write_text(path.read_text().replace(f'"owner_pid": {os.getpid()}', f'"owner_pid": {dead.stdout.strip()}'))
    [(record, outcome)] = records.resume_orphans()
    assert record.migration_id == "m1" and "resumed" in outcome
    assert state(pid) != "T" and not path.exists()


def test_a_reused_pid_is_never_signalled(stopped_process):
    record = PauseRecord("m1", "pid", pid=stopped_process.pid, pid_start=process_start(stopped_process.pid) + 1)
    assert "gone" in resume(record)
    assert state(stopped_process.pid) == "T"


@pytest.fixture
def guest(shm_dir: Path) -> Iterator[GuestProcess]:
    running = GuestProcess(shm_dir / "guest.img", ["--size-mib", "32", "--touch-ratio", "0.5", "--rate", "2"])
    yield running
    running.close()


def paused_then_sender_killed(receiver: ServiceProcess, guest: GuestProcess, state_dir: Path) -> None:
    """A stop-and-copy migration pauses the guest; the receiver is frozen before it can
    complete; then the sender is SIGKILLed: the guest stays stopped, with its record."""
    with ServiceProcess("sender", ["--state-dir", str(state_dir)]) as tx:
        channel, stub = sender_stub(tx.address)
        with channel:
            migration_id = stub.StartMigration(
                pb.StartMigrationRequest(
                    destination=receiver.address,
                    regions=[pb.GuestMemoryRegion(gpa=0, path=str(guest.memory))],
                    guest_pid=guest.pid,
                    max_batch_bytes=64 << 10,
                ),
                timeout=10,
            ).migration_id
            wait_for(stub, migration_id, lambda status: status.guest_state == "paused")
            receiver.process.send_signal(signal.SIGSTOP)  # no completion can come now
            try:
                assert stub.GetMigration(pb.MigrationRequest(migration_id=migration_id)).state == pb.RUNNING
                tx.process.send_signal(signal.SIGKILL)
                tx.process.wait(10)
            finally:
                receiver.process.send_signal(signal.SIGCONT)
    assert guest.stopped
    assert [path.name for path in state_dir.glob("*.paused.json")] == [f"{migration_id}.paused.json"]


def wait_resumed(guest: GuestProcess, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while guest.stopped:
        assert time.monotonic() < deadline, "the guest was never resumed"
        time.sleep(0.05)


@pytest.mark.e2e
def test_a_restarted_sender_resumes_the_guest_its_predecessor_left_paused(receiver, guest, shm_dir):
    state_dir = shm_dir / "sender-state"
    paused_then_sender_killed(receiver, guest, state_dir)
    with ServiceProcess("sender", ["--state-dir", str(state_dir)]) as restarted:
        wait_resumed(guest)
        assert any("its sender died with the guest paused" in line for line in restarted.lines)
    assert not list(state_dir.glob("*.paused.json"))


@pytest.mark.e2e
def test_livemig_guest_resume_resumes_what_a_dead_sender_paused(receiver, guest, shm_dir):
    state_dir = shm_dir / "sender-state"
    paused_then_sender_killed(receiver, guest, state_dir)
    result = run_cli("guest", "resume", "--state-dir", str(state_dir))
    assert result.returncode == 0, result.stderr
    assert "resumed (SIGCONT)" in result.stdout
    wait_resumed(guest)
    again = run_cli("guest", "resume", "--state-dir", str(state_dir))
    assert again.returncode == 0 and "no guest left paused" in again.stdout
