"""The receiver's control process under sessions that end while others begin (issue 20).

A prepare counts the space promised to sessions in flight by looking at their
destination files; a session aborted or expired meanwhile has just removed them.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from livemig.common.ranges import MemoryRange
from livemig.receiver.errors import ReceiverError
from livemig.receiver.registry import ReceiverLimits, SessionRegistry

MIB = 1 << 20


def test_prepare_counts_a_session_whose_files_just_went_as_ending(shm_dir: Path):
    """The window of the race, held open: a session still listed active whose files an
    abort has removed. Before the fix this prepare failed with ENOENT and the path."""
    registry = SessionRegistry(shm_dir, ReceiverLimits(idle_timeout_seconds=3600))
    try:
        ending = registry.prepare([MemoryRange(0, MIB)], 4096, "ending")
        shutil.rmtree(ending.directory)  # what Session.abort does, before the state is seen
        fresh = registry.prepare([MemoryRange(0, MIB)], 4096, "fresh")
        assert fresh.active
    finally:
        registry.close()


def test_prepares_beside_a_client_that_prepares_and_aborts_never_fail(shm_dir: Path):
    registry = SessionRegistry(shm_dir, ReceiverLimits(idle_timeout_seconds=3600, max_sessions=64))
    stop = threading.Event()
    churned = [0]

    def churn() -> None:
        while not stop.is_set() and churned[0] < 2000:
            # Many regions: a prepare spends longer looking at this session's files.
            session = registry.prepare([MemoryRange(i * MIB, 4096) for i in range(64)], 4096, "churn")
            registry.abort(session)
            churned[0] += 1

    thread = threading.Thread(target=churn)
    thread.start()
    failures: list[str] = []
    try:
        for _ in range(150):
            try:
                session = registry.prepare([MemoryRange(0, MIB)], 4096, "steady")
            except ReceiverError as error:
                failures.append(error.message)
                continue
            registry.abort(session)
    finally:
        stop.set()
        thread.join(30)
        registry.close()
    assert churned[0] > 0
    assert not failures, failures[:3]
    assert not any(str(shm_dir) in failure for failure in failures)


def test_storage_errors_name_no_host_path():
    import errno

    from livemig.receiver.errors import storage_error

    error = storage_error(OSError(errno.ENOENT, "No such file or directory", "/srv/secret/region-0.mem"), "opening")
    assert "/srv/secret" not in error.message and "No such file" in error.message
