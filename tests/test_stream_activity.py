"""When a data worker may give memory back: no stream open for a moment, once per quiet spell."""

from __future__ import annotations

import time

import pytest

from livemig.common.stream_activity import StreamActivity


def test_due_once_all_streams_closed_for_the_quiet_time_and_once_per_spell():
    activity = StreamActivity(quiet_seconds=0.05)
    assert not activity.due_for_trim()  # nothing happened since start: nothing to give back
    activity.opened()
    activity.opened()
    activity.closed()
    time.sleep(0.1)
    assert not activity.due_for_trim()  # one stream still open
    activity.closed()
    assert not activity.due_for_trim()  # closed just now: not quiet yet
    time.sleep(0.1)
    assert activity.due_for_trim()
    activity.trimmed()
    assert not activity.due_for_trim()  # given back already
    activity.opened()
    activity.trimmed()  # a session's end trim while a stream is open does not count
    activity.closed()
    time.sleep(0.1)
    assert activity.due_for_trim() and activity.open_streams == 0


def test_the_worker_sleeps_until_the_quiet_spell_can_end_and_no_longer():
    activity = StreamActivity(quiet_seconds=10.0)
    assert activity.seconds_until_due() == 10.0  # nothing to give back: a whole spell
    activity.opened()
    assert activity.seconds_until_due() == 10.0  # open: the spell starts at its close at the soonest
    activity.closed()
    assert 9.5 < activity.seconds_until_due() <= 10.0  # the rest of the spell from that close
    activity._last_closed -= 9.0  # as if it closed 9 s ago
    assert 0.5 < activity.seconds_until_due() <= 1.0
    activity._last_closed -= 5.0
    assert activity.seconds_until_due() == 0.0 and activity.due_for_trim()
    activity.trimmed()
    assert activity.seconds_until_due() == 10.0  # given back: nothing until a stream comes


def test_a_quiet_spell_has_a_length():
    """0 would make an idle process's wait (a spell long, seconds_until_due) a spin."""
    for seconds in (0.0, -1.0):
        with pytest.raises(ValueError):
            StreamActivity(quiet_seconds=seconds)
