"""`livemig demo`, the README's first command, works end to end (at a smaller size)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_migrates_and_verifies():
    result = subprocess.run(
        [sys.executable, "-m", "livemig.cli.main", "demo", "--size-mib", "32"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "destination identical to source byte for byte" in result.stdout
    assert "with skip" in result.stdout and "no skip" in result.stdout
