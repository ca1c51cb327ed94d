"""Where regions without an explicit guest-physical address go.

The sender places them, not the client: only the sender sees the files' sizes
(a client may run on another host, where the paths do not exist). Placement is
the Cloud Hypervisor / QEMU habit of laying RAM slots end to end: a region
without a GPA starts where the previous region of the request ends, the first at
0. Overlaps that result are then refused by the layout check like any other.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from livemig.common.proto import livemig_pb2 as pb


def place(gpas: Sequence[int | None], sizes: Sequence[int]) -> list[int]:
    """Each region's GPA: the given one, or the end of the previous region (0 for the first)."""
    placed: list[int] = []
    next_gpa = 0
    for gpa, size in zip(gpas, sizes, strict=True):
        start = next_gpa if gpa is None else gpa
        placed.append(start)
        next_gpa = start + size
    return placed


@dataclass(frozen=True, slots=True)
class PlacedRegion:
    gpa: int
    path: str
    dirty_log: str


def place_request_regions(regions: Sequence[pb.GuestMemoryRegion]) -> list[PlacedRegion]:
    """The request's regions at their GPAs, sorted by GPA; sizes from this host's files.

    Raises FileNotFoundError/PermissionError for a file that cannot be stat'ed,
    as opening it would.
    """
    gpas = [region.gpa if region.HasField("gpa") else None for region in regions]
    sizes = [os.stat(region.path).st_size for region in regions]
    placed = place(gpas, sizes)
    return sorted(
        (PlacedRegion(gpa, region.path, region.dirty_log) for gpa, region in zip(placed, regions, strict=True)),
        key=lambda r: r.gpa,
    )
