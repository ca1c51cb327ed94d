"""The sender's pool of idle connection processes: what it keeps, and for how long.

One wide migration must not leave the host its connection processes for minutes:
the surplus beyond `max_idle` goes after `surplus_idle_seconds`, the rest after
`idle_seconds`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from livemig.sender.connection_pool import ConnectionProcessPool, expired


def _idle(*since: float) -> list:
    return [SimpleNamespace(idle_since=value) for value in since]


def test_the_oldest_surplus_expires_first_and_max_idle_waits_longer() -> None:
    workers = _idle(0.0, 1.0, 2.0, 3.0)  # idle for 10, 9, 8 and 7 s at now = 10
    stale = expired(workers, now=10.0, max_idle=2, idle_seconds=60.0, surplus_idle_seconds=8.5)
    assert [w.idle_since for w in stale] == [0.0, 1.0]  # surplus (the two oldest), past 8.5 s
    stale = expired(workers, now=10.0, max_idle=2, idle_seconds=60.0, surplus_idle_seconds=9.5)
    assert [w.idle_since for w in stale] == [0.0]  # the second oldest has waited only 9 s
    assert expired(workers, now=10.0, max_idle=4, idle_seconds=60.0, surplus_idle_seconds=0.0) == []
    stale = expired(workers, now=10.0, max_idle=4, idle_seconds=7.5, surplus_idle_seconds=0.0)
    assert [w.idle_since for w in stale] == [0.0, 1.0, 2.0]  # no surplus: only idle_seconds counts


def test_processes_beyond_max_idle_end_soon_and_the_rest_stay() -> None:
    pool = ConnectionProcessPool(max_idle=1, idle_seconds=60.0, surplus_idle_seconds=0.3)
    try:
        workers = [pool.acquire() for _ in range(3)]
        for worker in workers:
            pool.release(worker)  # all three kept: three were in use at once
        assert len(pool._idle) == 3
        deadline = time.monotonic() + 30.0
        while len(pool._idle) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._idle) == 1, "the surplus stayed idle"
        survivor = pool._idle[0]
        assert survivor.usable
        ended = [w for w in workers if w is not survivor]
        deadline = time.monotonic() + 10.0
        while any(w.process.is_alive() for w in ended) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(w.process.is_alive() for w in ended), "an expired process is still running"
        assert pool.acquire() is survivor  # the one kept serves the next migration
        pool.release(survivor)
    finally:
        pool.close()
    assert not survivor.process.is_alive()
