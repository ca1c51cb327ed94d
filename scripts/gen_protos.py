"""Regenerate the committed protobuf/gRPC code in common/proto/.

The generated gRPC module imports its messages by the proto package path
(`livemig.v1`); we install the code as `livemig.common.proto`, so the import is
rewritten. tests/test_protos_fresh.py runs `generate()` into a temporary folder
and fails when the committed files differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO_FILE = "livemig/v1/livemig.proto"
TARGET = ROOT / "common" / "proto"
GENERATED = ("livemig_pb2.py", "livemig_pb2.pyi", "livemig_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    """Run grpc_tools.protoc and write the three generated files into out_dir."""
    from grpc_tools import protoc  # dev dependency, pinned to the grpcio version

    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "livemig" / "v1" / name).read_text()
            text = text.replace("from livemig.v1 import livemig_pb2", "from livemig.common.proto import livemig_pb2")
            (out_dir / name).write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET)
