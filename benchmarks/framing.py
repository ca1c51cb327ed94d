"""Raw-bytes PageBatch framing (common/wire.py) against plain protobuf `bytes`, side by side.

Run: .venv/bin/python benchmarks/framing.py
Prints encode and decode cost per batch for 4 MiB of payload split into N ranges.
"""

from __future__ import annotations

import os
import time

import numpy as np

from livemig.common.proto import livemig_pb2 as pb
from livemig.common.wire import decode_batch, encode_batch, pack_ranges

PAYLOAD = 4 << 20
ROUNDS = 200


def timed(function, rounds: int = ROUNDS) -> float:
    function()
    started = time.perf_counter()
    for _ in range(rounds):
        function()
    return (time.perf_counter() - started) / rounds * 1000


def main() -> None:
    chunk = memoryview(os.urandom(PAYLOAD))
    print(
        f"{'ranges':>7} {'fast encode':>12} {'pb encode':>10} {'fast decode':>12} {'pb decode':>10}",
        "(ms per 4 MiB batch)",
    )
    for count in (1, 64, 512):
        size = PAYLOAD // count
        ranges = np.array([[i * size * 2, size] for i in range(count)], dtype=np.uint64)
        parts = [chunk[i * size : (i + 1) * size] for i in range(count)]

        def fast_encode(ranges=ranges, parts=parts) -> bytes:
            return encode_batch("token", 1, ranges, parts)

        def pb_encode(ranges=ranges, parts=parts) -> bytes:
            return pb.PageBatch(
                session_token="token", batch_id=1, ranges=pack_ranges(ranges), data=b"".join(parts)
            ).SerializeToString()

        raw = fast_encode()

        def fast_decode(raw=raw) -> int:
            return len(decode_batch(raw).data)

        def pb_decode(raw=raw) -> int:
            return len(pb.PageBatch.FromString(raw).data)

        print(
            f"{count:>7} {timed(fast_encode):>12.3f} {timed(pb_encode):>10.3f} "
            f"{timed(fast_decode):>12.3f} {timed(pb_decode):>10.3f}"
        )


if __name__ == "__main__":
    main()
