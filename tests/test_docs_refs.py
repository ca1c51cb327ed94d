"""Every test the docs cite exists (a renamed test must take its citations along)."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"`(?:tests/)?(test_\w+\.py)(?:::([\w*]+))?`|`(test_[\w*]+)`")


def defined_tests() -> dict[str, set[str]]:
    return {
        path.name: set(re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE))
        for path in (ROOT / "tests").glob("test_*.py")
    }


def test_tests_cited_in_the_docs_exist():
    tests = defined_tests()
    every = set().union(*tests.values())
    missing = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for module, name, bare in CITED.findall(document.read_text()):
            if module and module not in tests:
                missing.append(f"{document.name}: {module}")
            elif name and not fnmatch.filter(tests[module], name):
                missing.append(f"{document.name}: {module}::{name}")
            elif bare and not bare.endswith(".py") and not fnmatch.filter(every, bare):
                missing.append(f"{document.name}: {bare}")
    assert not missing, missing
