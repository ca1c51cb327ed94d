"""The receiver's ledger: totals counted once per batch id, the latest attempt's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from livemig.receiver.ledger import SessionLedger

# (batch id, attempt, written bytes): reports as data workers send them, in any order
# and repeated (a resend acknowledged again, a late report of an earlier attempt).
reports = st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 1 << 20)), max_size=40)


@given(reports)
def test_totals_are_the_highest_attempt_of_each_id(sequence):
    ledger = SessionLedger()
    highest: dict[int, tuple[int, int]] = {}
    without_id = [0, 0]  # id 0 ("no id") counts every time
    for batch_id, attempt, written in sequence:
        counted = ledger.record_batch(batch_id, written, written // 2, attempt)
        if batch_id == 0:
            without_id[0] += written
            without_id[1] += 1
            assert counted.new_batch
        elif batch_id not in highest or highest[batch_id][0] < attempt:
            assert counted.new_batch == (batch_id not in highest)
            assert counted.written == written
            highest[batch_id] = (attempt, written)
        else:
            assert not counted.new_batch and counted.written == 0 and counted.zeroed == 0
    expected = sum(written for _attempt, written in highest.values()) + without_id[0]
    assert ledger.totals() == (expected, len(highest) + without_id[1])


def test_a_later_attempt_replaces_the_earlier_bytes_and_keeps_one_batch():
    ledger = SessionLedger()
    assert ledger.record_batch(7, 8192, 0).new_batch
    replaced = ledger.record_batch(7, 4096, 4096, attempt=1)
    assert not replaced.new_batch and replaced.written == 4096 and replaced.zeroed == 4096
    assert ledger.totals() == (4096, 1) and ledger.zeroed_bytes == 4096
    assert ledger.record_batch(7, 8192, 0).written == 0  # the first attempt, reported late
    assert ledger.totals() == (4096, 1)
