"""`livemig demo`, the README's first command, works end to end (at a smaller size)."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.e2e


def test_demo_migrates_and_verifies():
    result = run_cli("demo", "--size-mib", "32", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "destination identical to source byte for byte" in result.stdout
    assert "with skip" in result.stdout and "no skip" in result.stdout
    assert "median of 3 runs, after a warm-up" in result.stdout  # no first-migration costs in the ratio
