"""Figures as a person reads them, in every process: binary units (MiB, MiB/s), as the
README promises for the bar, the tables and the logs alike."""

from __future__ import annotations

import math


def format_bytes(count: float) -> str:
    """Binary units, one decimal: what a person reads in the bar, the tables and the logs."""
    if not math.isfinite(count):
        return str(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{int(count)} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
