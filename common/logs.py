"""Log set-up for both services: text for people, JSON lines for log pipelines.

Records may carry `migration_id` (passed as `extra`); both formats show it, so
every line of one migration can be found with one filter.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        migration_id = getattr(record, "migration_id", None)
        if migration_id:
            entry["migration_id"] = migration_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        migration_id = getattr(record, "migration_id", None)
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
