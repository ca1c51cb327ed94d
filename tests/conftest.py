"""Shared fixtures: real livemig processes on loopback, guest images on tmpfs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import ServiceProcess

# No timing assertions anywhere: this machine is shared and noisy.
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
