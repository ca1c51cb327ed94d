"""The committed generated code matches protos/ with the pinned grpcio-tools."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    generator = _load_generator()
    generator.generate(tmp_path)
    for name in generator.GENERATED:
        committed = (ROOT / "common" / "proto" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"common/proto/{name} is stale: run scripts/gen_protos.py"


def test_grpcio_tools_is_pinned_to_grpcio():
    assert importlib.metadata.version("grpcio-tools") == importlib.metadata.version("grpcio")
