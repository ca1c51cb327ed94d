"""A pooled sender connection process forgets the previous migration's token (issue 20)."""

from __future__ import annotations

import secrets
import subprocess
import sys

from livemig.common.stream_activity import StreamActivity
from livemig.common.tls import INSECURE
from livemig.sender.connection_messages import ConnectionSpec, Failed
from livemig.sender.connection_process import _ConnectionRun, wipe_text


class Words:
    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, message: object) -> None:
        self.sent.append(message)


def test_the_token_of_a_finished_migration_is_wiped_in_place():
    token = secrets.token_urlsafe(32)
    copy = "".join(token)  # an equal string elsewhere, to compare with
    spec = ConnectionSpec(0, "127.0.0.1:1", INSECURE, token, (), 4096, 65536, False)
    words = Words()
    activity = StreamActivity()
    run = _ConnectionRun(spec, words, activity)
    run.thread.join(30)
    assert words.sent and isinstance(words.sent[-1], Failed)  # no guest files: it ends at once
    assert token != copy and set(token) == {"\0"}  # the very string this process held
    assert activity.open_streams == 0  # its end counts: the quiet spell before the trim starts


def test_wipe_leaves_other_strings_alone():
    text, other = secrets.token_urlsafe(8), "kept"
    wipe_text(text)
    assert set(text) == {"\0"} and other == "kept"
    wipe_text("")  # nothing to do


def test_connection_processes_are_not_dumpable():
    code = (
        "import ctypes; from livemig.sender.connection_process import not_dumpable; not_dumpable();"
        "print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"  # PR_GET_DUMPABLE
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "0"
