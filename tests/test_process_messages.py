"""Messages between processes are types, every handler matches all of its side's types,
and a message of any other type (an old tuple, say) is caught as a bug."""

from __future__ import annotations

import ast
import inspect
import pickle
import textwrap
import typing
from types import SimpleNamespace

import numpy as np
import pytest

from livemig.common.tls import INSECURE
from livemig.common.worker_processes import UnknownMessage, WorkerLog
from livemig.receiver import data_worker, worker_messages
from livemig.receiver.data_worker_pool import DataWorkerPool
from livemig.receiver.errors import Reason
from livemig.sender import connection_messages, connection_process
from livemig.sender.chunks import ChunkOutcome, ChunkReport
from livemig.sender.transfer import TransferPool

# (handler, the union of messages it must handle)
HANDLERS = [
    (TransferPool._handle, connection_messages.FromConnection),
    (connection_process.serve, connection_messages.ToConnection),
    (DataWorkerPool._handle, worker_messages.FromWorker),
    (data_worker.obey, worker_messages.ToWorker),
]


def matched_classes(function) -> set[str]:
    """The class names the `case` patterns of a function's `match` statements name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.MatchClass) and isinstance(node.cls, ast.Name):
            names.add(node.cls.id)
    return names


@pytest.mark.parametrize(("handler", "union"), HANDLERS, ids=lambda h: getattr(h, "__qualname__", ""))
def test_every_message_of_a_side_has_its_case(handler, union):
    expected = {cls.__name__ for cls in typing.get_args(union)}
    assert matched_classes(handler) == expected


def test_a_connection_run_handles_every_message_serve_hands_it():
    handled = matched_classes(connection_process._ConnectionRun.handle)
    assert handled == {"SendChunks", "Close", "Stop"}


@pytest.mark.parametrize("message", [("done", 1), ("chunk", 1, None, False, 0, 0), "stop", None, object()])
def test_an_unknown_message_is_caught_on_every_side(message):
    with pytest.raises(UnknownMessage):
        TransferPool._handle(object.__new__(TransferPool), None, message)
    with pytest.raises(UnknownMessage):
        connection_process.serve(message, None, None, None)
    with pytest.raises(UnknownMessage):
        object.__new__(connection_process._ConnectionRun).handle(message)
    with pytest.raises(UnknownMessage):
        DataWorkerPool._handle(object.__new__(DataWorkerPool), SimpleNamespace(spec=SimpleNamespace(index=0)), message)
    with pytest.raises(UnknownMessage):
        data_worker.obey(message, None, None, None)


def examples() -> list[object]:
    """One value of every message type (and the typed error), as the pipes carry them."""
    spec = connection_messages.ConnectionSpec(0, "127.0.0.1:1", INSECURE, "token", (), 4096, 65536, False)
    failure = connection_messages.ConnectionFailure(connection_messages.FailureKind.RECEIVER, "no", "UNAVAILABLE")
    return [
        connection_messages.Begin(spec),
        connection_messages.Close(),
        connection_messages.Stop(),
        connection_messages.Exit(),
        connection_messages.ChunksDone((ChunkReport(0, 1, ChunkOutcome(chunk_bytes=4096), 1.0, 2.0),)),
        connection_messages.Finished(2),
        connection_messages.Failed(failure),
        WorkerLog("livemig.sender", 30, "text"),
        worker_messages.EndSession("s", "aborted", 0.0),
        worker_messages.ReopenSession("s"),
        worker_messages.Settle(3),
        worker_messages.StopWorker(1.5),
        worker_messages.Listening(7000),
        worker_messages.ListenFailed("address in use"),
        worker_messages.BatchApplied("s", 5, 1, 4096, 0, 4),
        worker_messages.BatchRejected(Reason.OVERLAP),
        worker_messages.StreamChanged("s", -1),
        worker_messages.SessionEnded("s"),
        worker_messages.SessionReopened("s"),
        worker_messages.Settled(3),
    ]


def test_every_message_survives_the_pipe():
    for message in examples():
        assert pickle.loads(pickle.dumps(message)) == message
    order = connection_messages.ChunkOrder(7, np.array([[0, 4096]], dtype=np.uint64), True, 1, 3)
    (copy,) = pickle.loads(pickle.dumps(connection_messages.SendChunks((order,)))).orders
    assert (copy.chunk_id, copy.zero_records, copy.attempt, copy.settled_below) == (7, True, 1, 3)
    assert copy.ranges.tolist() == [[0, 4096]]


def test_the_examples_cover_every_message_type():
    unions = [
        connection_messages.ToConnection,
        connection_messages.FromConnection,
        worker_messages.ToWorker,
        worker_messages.FromWorker,
    ]
    every = {cls for union in unions for cls in typing.get_args(union)}
    assert every - {type(m) for m in examples()} == {connection_messages.SendChunks}


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        worker_messages.Settle(1).number = 2  # type: ignore[misc]
