"""The one retry rule of a sender connection (common/retry_budget.py)."""

from __future__ import annotations

from livemig.common.retry_budget import RetryBudget


def test_gives_up_after_max_failures_in_a_row():
    budget = RetryBudget(max_failures=2, budget_seconds=100.0)
    assert not budget.failed(1.0)
    assert not budget.failed(2.0)
    assert budget.failed(3.0)
    assert budget.failures == 3


def test_progress_makes_the_next_failure_a_first_one():
    budget = RetryBudget(max_failures=2, budget_seconds=100.0)
    budget.failed(1.0)
    budget.failed(2.0)
    budget.progressed()
    assert not budget.failed(50.0)
    assert budget.failing_since == 50.0 and budget.failures == 1


def test_the_clock_runs_from_the_first_failure_not_the_last_progress():
    budget = RetryBudget(max_failures=10, budget_seconds=30.0)
    assert not budget.failed(100.0)  # a minute after the last acknowledgement: still a first failure
    assert not budget.failed(120.0)
    assert budget.failed(131.0)  # failing for 31 s
    assert budget.stalled(131.0) == 31.0


def test_progress_that_keeps_the_count_restarts_the_clock():
    budget = RetryBudget(max_failures=10, budget_seconds=30.0)
    budget.failed(100.0)
    assert not budget.failed(135.0, last_progress=120.0)  # scanned at 120: failing since 135
    assert budget.failures == 2 and budget.failing_since == 135.0
