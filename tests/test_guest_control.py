"""Pausing the source guest: only the process that was checked, through its pidfd."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from livemig.sender.guest import GuestControl, GuestControlError
from tests.helpers import start_guest


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_pause_and_resume_go_to_the_checked_process(shm_dir: Path) -> None:
    memory = shm_dir / "guest.mem"
    memory.write_bytes(bytes(1 << 20))
    guest = start_guest(memory)
    fd = os.open(memory, os.O_RDONLY)
    before = _open_fds()
    try:
        control = GuestControl("m", guest.pid)
        control.check([fd])
        assert _open_fds() == before + 1  # the pidfd
        control.pause()
        assert _state(guest.pid) == "T"
        control.resume()
        assert _state(guest.pid) != "T"
        control.close()
        assert _open_fds() == before
    finally:
        os.close(fd)
        guest.kill()
        guest.wait()


def test_a_guest_that_exited_is_never_signalled_again(shm_dir: Path) -> None:
    """Once the checked process is gone its pid may belong to anyone: the pidfd makes the
    stop fail instead of landing on the pid's next owner."""
    memory = shm_dir / "guest.mem"
    memory.write_bytes(bytes(1 << 20))
    guest = start_guest(memory)
    fd = os.open(memory, os.O_RDONLY)
    try:
        control = GuestControl("m", guest.pid)
        control.check([fd])
        guest.kill()
        guest.wait()
        with pytest.raises(GuestControlError, match=r"exist|exited"):
            control.pause()
        assert not control.paused
        control.close()
    finally:
        os.close(fd)


def test_a_process_that_maps_none_of_the_regions_is_refused_and_nothing_is_held(shm_dir: Path) -> None:
    memory, other = shm_dir / "guest.mem", shm_dir / "other.mem"
    memory.write_bytes(bytes(1 << 20))
    other.write_bytes(bytes(1 << 20))
    guest = start_guest(other)
    fd = os.open(memory, os.O_RDONLY)
    before = _open_fds()
    try:
        with pytest.raises(GuestControlError, match="does not map"):
            GuestControl("m", guest.pid).check([fd])
        assert _open_fds() == before  # the pidfd was closed again
    finally:
        os.close(fd)
        guest.kill()
        guest.wait()
