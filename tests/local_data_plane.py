"""A receiver session's batches applied in this process, for unit tests: what a data worker
does with a batch (validate and write it, then report it to the session's ledger), without
a worker process. The product has no in-process data plane; this is the tests' stand-in."""

from __future__ import annotations

from livemig.common.wire import DecodedBatch
from livemig.receiver.session import Session
from livemig.receiver.writer import SessionWriter

_writers: list[tuple[Session, SessionWriter]] = []  # each session's writer, the session held alive


def apply(session: Session, batch: DecodedBatch) -> tuple[int, int]:
    """Validate and write a batch, and count it; returns (bytes written, zeroed)."""
    session.check_active()
    _release_ended()
    writer = next((w for s, w in _writers if s is session), None)
    if writer is None:
        writer = SessionWriter(session.record)
        _writers.append((session, writer))
    written, zeroed, _wrote = writer.apply(batch)
    header = batch.header
    session.ledger.record_batch(header.batch_id, written, zeroed, header.attempt, header.settled_below)
    session.ledger.settle(session.ledger.pending_mark())  # one process: every report is in
    return written, zeroed


def _release_ended() -> None:
    """The writers of sessions that ended close their files (as a data worker does)."""
    for entry in [entry for entry in _writers if not entry[0].active]:
        session, writer = entry
        writer.end(session.state.value)
        writer.release()
        _writers.remove(entry)
