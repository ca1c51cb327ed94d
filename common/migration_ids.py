"""What a migration id may be, on both services: it ends up in logs, metrics labels and
file-free places only, but a client chooses it, so it is checked at the door."""

from __future__ import annotations

import re

MAX_MIGRATION_ID_CHARS = 64
MIGRATION_ID_RULE = f"at most {MAX_MIGRATION_ID_CHARS} characters of [A-Za-z0-9_-]"
_MIGRATION_ID = re.compile(r"[A-Za-z0-9_-]+")


def is_migration_id(text: str) -> bool:
    return len(text) <= MAX_MIGRATION_ID_CHARS and _MIGRATION_ID.fullmatch(text) is not None
