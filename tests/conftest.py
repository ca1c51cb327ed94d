"""Shared fixtures: real livemig processes on loopback, guest images on tmpfs."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import ServiceProcess

# This machine is shared and noisy: hypothesis runs without deadlines, and no test
# asserts on speed. The few timing assertions are the promise under test, with margins
# load cannot break: a lower bound the code guarantees (a 1.5 s timeout waited at least
# 1.5 s: test_e2e_live.py::test_timeout_ms_ends_precopy) or an upper bound far from
# the failure it rules out (cancel in < 10 s, not the 15 s control timeout:
# test_faults.py; a dead sender's session dropped in < 15 s with --idle-timeout 1:
# test_limits.py).
settings.register_profile("livemig", deadline=None, max_examples=150)
settings.load_profile("livemig")


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    """A scratch folder on tmpfs (guest memory lives there on real hosts)."""
    path = Path(tempfile.mkdtemp(prefix="livemig-test-", dir=tmpfs_dir()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def module_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="livemig-test-", dir=tmpfs_dir()))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def receiver(module_dir: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess("receiver", ["--memory-dir", str(module_dir / "destination")]) as process:
        yield process


@pytest.fixture(scope="module")
def sender() -> Iterator[ServiceProcess]:
    with ServiceProcess("sender", []) as process:
        yield process


HUGE_PAGES = Path("/proc/sys/vm/nr_hugepages")


@pytest.fixture
def hugetlbfs(shm_dir: Path) -> Iterator[Path]:
    """A private hugetlbfs mount with 32 reserved 2 MiB pages (root only); restored after."""
    if not HUGE_PAGES.exists():
        pytest.skip("no huge pages in this kernel")
    before = HUGE_PAGES.read_text().strip()
    mount_point = shm_dir / "huge"
    mount_point.mkdir()
    try:
        HUGE_PAGES.write_text(str(int(before) + 32))
        mounted = subprocess.run(
            ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "none", str(mount_point)], capture_output=True, text=True
        )
    except OSError as error:
        pytest.skip(f"cannot reserve huge pages here (needs root): {error}")
    if mounted.returncode:
        HUGE_PAGES.write_text(before)
        pytest.skip(f"cannot mount hugetlbfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        HUGE_PAGES.write_text(before)
