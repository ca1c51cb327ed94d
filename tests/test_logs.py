"""Client strings in log lines: escaped (text) and bounded (both formats)."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from livemig.common.logs import MAX_MESSAGE_CHARS, JsonFormatter, TextFormatter

FORGED = "m1\n2026-01-01 00:00:00,000 INFO livemig.sender migration done\x1b[2J"


def record(message: str, *args: object, migration_id: str | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("livemig.receiver", logging.INFO, __file__, 1, message, args, None)
    if migration_id is not None:
        entry.migration_id = migration_id
    return entry


def test_text_lines_cannot_be_forged():
    line = TextFormatter().format(record("session aborted: %s", FORGED, migration_id=FORGED))
    assert "\n" not in line and "\x1b" not in line
    assert "m1\\n2026-01-01" in line and "\\x1b[2J" in line
    assert "migration_id=m1\\n2026-01-01" in line


def test_text_keeps_tracebacks_of_the_service_itself():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "Traceback" in TextFormatter().format(entry)


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_huge_client_strings_are_truncated(formatter):
    huge = "r" * (4 << 20)
    line = formatter.format(record("abort: %s (%s)", huge, "tail", migration_id="i" * 10_000))
    assert len(line) < 2 * MAX_MESSAGE_CHARS
    assert "more characters]" in line and "(tail)" in line  # one argument clipped, not the rest


def test_json_is_one_parseable_line_with_the_original_characters():
    line = JsonFormatter().format(record("abort: %s", FORGED, migration_id="m1"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "abort: " + FORGED and entry["migration_id"] == "m1"
