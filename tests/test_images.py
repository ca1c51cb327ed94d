"""The synthetic guest images the demo, benchmarks and tests are built on."""

from __future__ import annotations

import os

import numpy as np

from livemig.cli.images import RUN_PAGES, make_image, touched_pages

PAGE = 4096


def test_runs_pattern_touches_whole_runs():
    flags = touched_pages(100 * RUN_PAGES, 0.5, np.random.default_rng(1), "runs")
    runs = flags.reshape(-1, RUN_PAGES)
    assert (runs.all(axis=1) | ~runs.any(axis=1)).all()  # every run all touched or all untouched
    assert 0.3 < flags.mean() < 0.7


def test_image_pages_are_zero_or_data_as_reported(shm_dir):
    path = shm_dir / "guest.img"
    touched = make_image(path, 64 * PAGE * 4, 0.5, seed=3, pattern="runs")
    pages = np.frombuffer(path.read_bytes(), dtype=np.uint8).reshape(-1, PAGE)
    assert int(pages.any(axis=1).sum()) == touched
    assert os.stat(path).st_size == 64 * PAGE * 4
