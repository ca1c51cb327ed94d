"""Storage faults at write time: a full or over-quota destination filesystem.

Destination files are sparse, so space is only taken when pages are written: a
filesystem that fills up (ENOSPC) or a quota that is reached (EDQUOT) shows up
in the middle of a transfer. That is no network fault to retry and no bug to
trace back: the session cannot finish, so it is aborted (its files removed) and
the batch refused with RESOURCE_EXHAUSTED, logged once by the servicer.
"""

from __future__ import annotations

import errno

from livemig.receiver.errors import Reason, ReceiverError

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def storage_fault(error: OSError, directory: object) -> ReceiverError | None:
    """The refusal for a write that failed for lack of space, or None for any other error."""
    if error.errno not in STORAGE_ERRNOS:
        return None
    return ReceiverError(
        Reason.STORAGE,
        f"destination storage full in {directory} ({errno.errorcode[error.errno]}); "
        "session aborted and its memory removed",
    )
