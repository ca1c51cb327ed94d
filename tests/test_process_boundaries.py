"""Process boundaries hold: a data-plane process loads no control-plane or metrics code,
and no livemig module imports itself back through a circle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "common": "livemig.common",
    "sender": "livemig.sender",
    "receiver": "livemig.receiver",
    "cli": "livemig.cli",
}

# What each data-plane process's entry module may load, and nothing else of livemig:
# the chunk or batch vocabulary, the stream or writer, and common code. Statistics,
# metrics, registries, ledgers and services belong to the parent process.
DATA_PLANE = {
    "livemig.sender.connection_process": {
        "livemig.sender.batch_builder",
        "livemig.sender.chunks",
        "livemig.sender.compression_pace",
        "livemig.sender.connection_messages",
        "livemig.sender.connection_process",
        "livemig.sender.stream",
    },
    "livemig.receiver.data_worker": {
        "livemig.receiver.batch_ids",
        "livemig.receiver.data_service",
        "livemig.receiver.data_worker",
        "livemig.receiver.errors",
        "livemig.receiver.session_record",
        "livemig.receiver.shared_batch_ids",
        "livemig.receiver.worker_messages",
        "livemig.receiver.write_mode",
        "livemig.receiver.write_turns",
        "livemig.receiver.writer",
    },
}
CONTROL_PLANE = ("metrics", "stats", "registry", "ledger", "session", "service", "server", "migration", "transfer")


def loaded_by(module: str) -> set[str]:
    """The livemig modules a fresh interpreter has loaded after importing `module`."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('livemig'))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("entry", sorted(DATA_PLANE))
def test_a_data_plane_process_loads_only_data_plane_modules(entry):
    side = entry.rsplit(".", 1)[0]
    loaded = {m for m in loaded_by(entry) if m.startswith(side + ".")}
    assert loaded == DATA_PLANE[entry]
    assert not [m for m in loaded if m.rsplit(".", 1)[1] in CONTROL_PLANE]
    assert not any(m.startswith("livemig.cli") for m in loaded_by(entry))


def import_graph() -> dict[str, set[str]]:
    """livemig module -> the livemig modules it imports, at any depth of its code (an
    import inside a function or under TYPE_CHECKING is a dependency too)."""
    files = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    imported.add(whole if whole in files else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downwards_only():
    """common imports no service and no CLI; the services import no CLI and not each other."""
    allowed = {
        "livemig.common": {"livemig.common"},
        "livemig.sender": {"livemig.common", "livemig.sender"},
        "livemig.receiver": {"livemig.common", "livemig.receiver"},
    }
    upward = [
        f"{module} -> {other}"
        for module, imported in import_graph().items()
        for other in imported
        if (layer := module.rsplit(".", 1)[0]) in allowed and other.rsplit(".", 1)[0] not in allowed[layer]
    ]
    assert upward == []
