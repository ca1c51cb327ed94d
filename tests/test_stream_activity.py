"""When a data worker may give memory back: no stream open for a moment, once per quiet spell."""

from __future__ import annotations

import time

from livemig.receiver.stream_activity import StreamActivity


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
