"""Chunk spans: fuller batches where memory is sparse, never a span past what a batch can describe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from livemig.cli.images import make_image
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb
from livemig.sender.chunk_spans import FILL, MAX_SPAN_PAGES, MIN_PAGES_PER_LIMIT, ChunkSpans
from livemig.sender.chunks import ChunkOutcome
from tests.helpers import assert_destination_equals_source, assert_stats_invariants, migrate

PAGE = 4096
MIB = 1 << 20
LIMIT = 8 * MIB


def observed(spans: ChunkSpans, share: float, times: int = 40) -> ChunkSpans:
    for _ in range(times):
        spans.observe(ChunkOutcome(chunk_bytes=LIMIT, transmitted_bytes=int(LIMIT * share)))
    return spans


def test_the_first_chunks_and_dense_memory_span_the_limit():
    assert ChunkSpans(LIMIT, PAGE).next_span() == LIMIT
    assert observed(ChunkSpans(LIMIT, PAGE), 1.0).next_span() == LIMIT
    assert observed(ChunkSpans(LIMIT, PAGE), 0.95).next_span() == LIMIT


def test_sparse_memory_gets_spans_whose_batches_are_nearly_full():
    half = observed(ChunkSpans(LIMIT, PAGE), 0.5).next_span()
    assert abs(half * 0.5 - FILL * LIMIT) <= PAGE  # expected payload: FILL of the limit
    assert observed(ChunkSpans(LIMIT, PAGE), 0.01).next_span() == 4 * LIMIT  # the default factor
    assert observed(ChunkSpans(LIMIT, PAGE, 16), 0.01).next_span() == 16 * LIMIT
    assert observed(ChunkSpans(LIMIT, PAGE, 1), 0.01).next_span() == LIMIT  # --chunk-span-factor 1
    all_zero = ChunkSpans(LIMIT, PAGE)
    all_zero.observe(ChunkOutcome())  # a chunk with no bytes says nothing
    assert all_zero.density == 1.0


def test_the_estimate_follows_memory_that_turns_dense():
    spans = observed(ChunkSpans(LIMIT, PAGE), 0.1)
    assert spans.next_span() == 4 * LIMIT
    spans = observed(spans, 1.0, times=12)
    assert spans.next_span() <= 1.1 * LIMIT


def test_huge_pages_and_small_limits_never_span_more_than_the_limit():
    assert observed(ChunkSpans(LIMIT, 2 * MIB), 0.01).next_span() == LIMIT
    small = (MIN_PAGES_PER_LIMIT - 1) * PAGE
    assert observed(ChunkSpans(small, PAGE), 0.01).next_span() == small


@given(
    st.integers(16, 1 << 14).map(lambda pages: pages * PAGE),
    st.sampled_from([512, PAGE, 16 * 1024]),
    st.integers(1, 16),
    st.lists(st.floats(0, 1), min_size=1, max_size=30),
)
def test_a_span_is_whole_pages_between_the_limit_and_what_a_header_can_describe(limit, page, factor, shares):
    limit -= limit % page
    spans = ChunkSpans(limit, page, factor)
    for share in shares:
        spans.observe(ChunkOutcome(chunk_bytes=limit, transmitted_bytes=int(limit * share)))
        span = spans.next_span()
        assert span % page == 0 or span == limit
        assert limit <= span <= max(limit, min(factor * limit, MAX_SPAN_PAGES * page))


@pytest.mark.e2e
def test_sparse_then_dense_memory_arrives_exact_in_fewer_batches(receiver, shm_dir):
    """Sparse memory first (spans grow), then dense memory (batches cut at the limit, the rest
    sent in later chunks): the destination is exact, every counter adds up, and it took
    fewer batches than chunks of the limit would."""
    sparse, dense = shm_dir / "sparse.img", shm_dir / "dense.img"
    make_image(sparse, 96 * MIB, 0.1, seed=5)
    make_image(dense, 16 * MIB, 1.0, seed=6)
    image = shm_dir / "guest.img"
    with open(image, "wb") as out:
        for part in (sparse, dense):
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out)
    limit = 512 * 1024
    batches = {}
    for factor in (1, 4):
        with ServiceProcess("sender", ["--chunk-span-factor", str(factor)]) as sender:
            status = migrate(
                sender.address,
                receiver.address,
                [(0, image)],
                connections=2,
                skip_zero_pages=True,
                verify=True,
                max_batch_bytes=limit,
            )
        assert status.state == pb.COMPLETED, status.error
        assert status.stats.verified
        assert_destination_equals_source(status, [(0, image)])
        assert_stats_invariants(status, True)
        pages = np.fromfile(image, dtype=np.uint64).reshape(-1, PAGE // 8)
        assert status.stats.transmitted_bytes == int(pages.any(axis=1).sum()) * PAGE
        batches[factor] = status.stats.batches
        for region in status.destination_regions:
            shutil.rmtree(type(image)(region.path).parent, ignore_errors=True)
    dense_batches = 16 * MIB // limit
    assert batches[1] == 112 * MIB // limit  # a chunk of the limit each, none all zero
    # The chunks handed out before the first reports span the limit (up to 18 here), the
    # rest of the sparse part 4 times it: about 18 + 174 / 4 + 32 (and a few cut short).
    assert dense_batches < batches[4] < 0.6 * batches[1]
