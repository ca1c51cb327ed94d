"""The guest's dirty-page maps of all regions, turned into guest-physical ranges."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from livemig.common.dirty_map import DirtyMap
from livemig.common.guest_memory import MemoryLayout
from livemig.common.ranges import MemoryRange


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
