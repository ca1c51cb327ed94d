"""The switchover policy: when to pause, from which bandwidth, and what a timeout does."""

from __future__ import annotations

import math

import pytest

from livemig.sender.convergence import UNKNOWN_MS, ConvergencePolicy, Decision, bounded_ms
from livemig.sender.stats import Counters

MIB = 1 << 20


def policy(**overrides) -> ConvergencePolicy:
    fields = {
        "downtime_ms": 300,
        "timeout_ms": 0,
        "force_on_timeout": False,
        "max_iterations": 30,
        "available_bandwidth": 0.0,
        "connections": 1,
    }
    return ConvergencePolicy(**{**fields, **overrides})


def sample(**counters) -> Counters:
    """One pass: 64 MiB prepared in 0.1 s, half of it sent in 0.5 s of flight."""
    fields = {
        "chunk_bytes": 64 * MIB,
        "scan_seconds": 0.1,
        "transmitted_bytes": 32 * MIB,
        "wire_bytes": 32 * MIB,
        "busy_seconds": 0.5,
    }
    return Counters(**{**fields, **counters})


def test_switchover_only_after_a_pass_over_dirty_pages():
    fits = policy().decide(iterations_done=1, remaining_bytes=MIB, expected_ms=10, elapsed_ms=100)
    assert fits is Decision.CONTINUE  # iteration 0 alone has not measured what dirty pages cost
    assert policy().decide(2, MIB, 10, 100) is Decision.SWITCHOVER
    assert policy().decide(1, 0, 10, 100) is Decision.SWITCHOVER  # nothing dirty at all
    assert policy().decide(5, MIB, 301, 100) is Decision.CONTINUE  # estimate over the target


def test_measured_bandwidth_and_its_estimate():
    bandwidth, source = policy().bandwidth(sample())
    assert (bandwidth, source) == (64 * MIB, "measured")
    expected, used, source = policy().expected_downtime_ms(64 * MIB, sample(), 4 * MIB, 0.001)
    # 64 MiB prepared at 640 MiB/s (0.1 s) + half of it on the wire at 64 MiB/s (0.5 s)
    # + two round trips of 1 ms.
    assert expected == pytest.approx(602, abs=1) and used == 64 * MIB and source == "measured"


def test_unknown_bandwidth_is_never_a_switchover():
    nothing_sent = Counters()
    expected, bandwidth, source = policy().expected_downtime_ms(MIB, nothing_sent, 4 * MIB, 0.001)
    assert (expected, bandwidth, source) == (UNKNOWN_MS, 0.0, "measured")
    assert policy().decide(3, MIB, expected, 100) is Decision.CONTINUE


def test_available_bandwidth_replaces_the_measured_one():
    bandwidth, source = policy(available_bandwidth=1e9).bandwidth(sample())
    assert (bandwidth, source) == (1e9, "available")


@pytest.mark.parametrize("available", [1e-300, 5e-324])
def test_tiny_bandwidth_gives_a_finite_bounded_estimate(available):
    expected, _bandwidth, source = policy(available_bandwidth=available).expected_downtime_ms(
        64 * MIB, sample(), 4 * MIB, 0.001
    )
    assert expected == UNKNOWN_MS and source == "available"
    assert expected < 2**63  # fits the status's int64/uint64 fields


@pytest.mark.parametrize("available", [math.nan, math.inf, -1.0])
def test_non_finite_or_negative_available_bandwidth_is_not_used(available):
    assert policy(available_bandwidth=available).bandwidth(sample())[1] == "measured"


def test_bounded_ms():
    assert bounded_ms(0.25) == 250
    assert bounded_ms(math.inf) == bounded_ms(math.nan) == bounded_ms(1e300) == UNKNOWN_MS
    assert bounded_ms(-1.0) == 0


@pytest.mark.parametrize(("force", "decision"), [(True, Decision.FORCE_SWITCHOVER), (False, Decision.GIVE_UP)])
def test_timeout_and_iteration_limit_force_or_cancel(force, decision):
    strict = policy(timeout_ms=1000, force_on_timeout=force, max_iterations=5)
    assert strict.decide(2, MIB, 10_000, elapsed_ms=999) is Decision.CONTINUE
    assert strict.decide(2, MIB, 10_000, elapsed_ms=1000) is decision  # out of time
    assert strict.decide(5, MIB, 10_000, elapsed_ms=10) is decision  # out of iterations
    assert strict.decide(5, MIB, 10, elapsed_ms=5000) is Decision.SWITCHOVER  # fitting wins over the limits


def test_verification_is_part_of_the_expected_downtime():
    """Expected 15 ms, measured 89 ms of which 68 ms verify: the estimate now counts it."""
    plain, _bandwidth, _source = policy().expected_downtime_ms(64 * MIB, sample(), 4 * MIB, 0.001)
    verified, _bandwidth, _source = policy().expected_downtime_ms(64 * MIB, sample(), 4 * MIB, 0.001, 0.068)
    assert verified - plain in (67, 68, 69)
