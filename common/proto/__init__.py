"""Generated protobuf and gRPC code for livemig.v1 (see scripts/gen_protos.py)."""
