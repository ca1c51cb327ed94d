"""The guest's dirty-page maps of all regions, turned into guest-physical ranges.

A map is never a free path from a request: the sender maps it read-write and clears
it, so a free path would let a client zero any file the sender can write. Each map
belongs to its region by a rule the sender enforces (`dirty_log_path`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from livemig.common.dirty_map import DirtyMap
from livemig.common.guest_memory import MemoryLayout
from livemig.common.ranges import MemoryRange

DIRTY_SUFFIX = ".dirty"


def dirty_log_path(region_path: str, dirty_log_dir: Path | None = None) -> str:
    """The only map a region may have: `<region>.dirty` beside it, or, when the sender
    is configured with a --dirty-log-dir, `<dir>/<region file name>.dirty`."""
    if dirty_log_dir is None:
        return region_path + DIRTY_SUFFIX
    return os.path.join(dirty_log_dir, os.path.basename(region_path) + DIRTY_SUFFIX)


class DirtyLog:
    def __init__(self, layout: MemoryLayout, map_paths: Sequence[str]) -> None:
        """map_paths are in layout (gpa) order. Raises ValueError on a map of the wrong size."""
        self.page_size = layout.page_size
        self.regions = layout.regions
        self.maps: list[DirtyMap] = []
        try:
            for region, path in zip(layout.regions, map_paths, strict=True):
                self.maps.append(DirtyMap(path, region.length // layout.page_size))
        except BaseException:
            self.close()
            raise

    def dirty_bytes(self) -> int:
        """Bytes dirty now, without clearing."""
        return sum(m.count() for m in self.maps) * self.page_size

    def clear(self) -> None:
        for dirty_map in self.maps:
            dirty_map.clear()

    def collect(self) -> list[MemoryRange]:
        """Dirty pages as merged ranges; their map entries are cleared (and fenced) first."""
        ranges: list[MemoryRange] = []
        for region, dirty_map in zip(self.regions, self.maps, strict=True):
            pages = dirty_map.collect()
            if not len(pages):
                continue
            breaks = np.flatnonzero(np.diff(pages) != 1)
            starts = np.concatenate(([pages[0]], pages[breaks + 1]))
            ends = np.concatenate((pages[breaks], [pages[-1]])) + 1
            ranges.extend(
                MemoryRange(region.gpa + int(s) * self.page_size, int(e - s) * self.page_size)
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)
            )
        return ranges

    def close(self) -> None:
        for dirty_map in self.maps:
            dirty_map.close()
