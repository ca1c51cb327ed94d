"""Log set-up for both services: text for people, JSON lines for log pipelines.

Records may carry `migration_id` (passed as `extra`); both formats show it, so
every line of one migration can be found with one filter.

Messages carry strings clients chose (migration ids, abort reasons, paths). Both
formats bound them, every string argument to MAX_ARGUMENT_CHARS and every message
to MAX_MESSAGE_CHARS, so a multi-megabyte value is not logged whole; the text format
also escapes control characters, so a newline in a client string cannot forge a
log line (JSON escapes them by itself).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime

from livemig.common.migration_ids import MAX_MIGRATION_ID_CHARS

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MAX_ARGUMENT_CHARS = 512
MAX_MESSAGE_CHARS = 8192
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, saying how many were dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def escape(text: str) -> str:
    """Control characters (newlines, ANSI escapes, Unicode line separators) as escapes."""
    return _CONTROL.sub(
        lambda m: _NAMED.get(
            m.group(), f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


def bounded_message(record: logging.LogRecord) -> str:
    """record.getMessage() with every string argument and the result clipped."""
    args = record.args
    if isinstance(args, Mapping):
        args = {
            key: clip(value, MAX_ARGUMENT_CHARS) if isinstance(value, str) else value for key, value in args.items()
        }
    elif isinstance(args, tuple):
        args = tuple(clip(value, MAX_ARGUMENT_CHARS) if isinstance(value, str) else value for value in args)
    message = str(record.msg)
    if args:
        message = message % args
    return clip(message, MAX_MESSAGE_CHARS)


def _migration_id(record: logging.LogRecord) -> str:
    value = getattr(record, "migration_id", None)
    return clip(str(value), MAX_MIGRATION_ID_CHARS) if value else ""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": bounded_message(record),
        }
        migration_id = _migration_id(record)
        if migration_id:
            entry["migration_id"] = migration_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape(bounded_message(record)), None
        line = super().format(safe)
        migration_id = escape(_migration_id(record))
        return f"{line} migration_id={migration_id}" if migration_id else line


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def announce(message: str, logger_name: str = "livemig") -> None:
    """A line scripts wait for ("listening on"): written whatever the level, in the
    configured format (JSON in JSON mode, so every line of the stream parses)."""
    record = logging.LogRecord(logger_name, logging.INFO, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        handler.handle(record)


def for_migration(logger: logging.Logger, migration_id: str) -> logging.LoggerAdapter:
    return logging.LoggerAdapter(logger, {"migration_id": migration_id})
