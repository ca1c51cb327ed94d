"""Wider chunks for sparse memory: livemig with --chunk-span-factor 1 against the default, side by side.

Usage: .venv/bin/python benchmarks/chunk_spans.py [--size 2G] [--touched 0.1,0.2,0.5] [--connections 2]
       [--rounds 4] [--factors 1,4] [--markdown]

Per touched ratio: one image, and two sender/receiver pairs per factor, every pair
reading that same image (pairs that read images of their own differed by up to 7 %
on this VM, by which image was written first: docs/benchmarks.md, stop 20). Every
round migrates with each pair, in an order reversed every other round, right after
writing and removing the guest's size and 1 GiB more on tmpfs (as qemu_compare.py
does). It prints each migration, then medians per factor: time, batches, CPU s per
GiB of guest memory of the sender's and receiver's process trees. Figures, never
pass/fail.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from livemig.cli.bench import GIB, measure_case, memory_state, memory_state_line, warm_free_memory
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess
from livemig.cli.units import size_in_mib_by_default
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

PAIRS_PER_FACTOR = 2


@dataclass(frozen=True)
class Run:
    ms: float
    batches: int
    sender: float  # CPU s per GiB of guest memory
    receiver: float


@dataclass(frozen=True)
class Pair:
    factor: int
    sender: ServiceProcess
    receiver: ServiceProcess

    def migrate(self, image: Path, size: int, touched: float, connections: int) -> Run:
        case = measure_case(
            self.sender, self.receiver, image, touched, connections, True, DEFAULT_MAX_BATCH_BYTES, peak_memory=False
        )
        assert case.ok, f"migration with --chunk-span-factor {self.factor} did not complete"
        gib = size / GIB
        return Run(float(case.duration_ms), case.batches, case.sender_cpu / gib, case.receiver_cpu / gib)


def measure(size: int, touched: float, connections: int, factors: list[int], rounds: int) -> dict[int, list[Run]]:
    runs: dict[int, list[Run]] = {factor: [] for factor in factors}
    workdir = Path(tempfile.mkdtemp(prefix="livemig-spans-", dir=tmpfs_dir()))
    try:
        image = workdir / "guest.img"
        make_image(image, size, touched, seed=7)
        with ExitStack() as stack:
            pairs: list[Pair] = []
            for copy in range(PAIRS_PER_FACTOR):
                for factor in factors if copy % 2 == 0 else factors[::-1]:
                    name = f"f{factor}-{copy}"
                    receiver = stack.enter_context(ServiceProcess("receiver", ["--memory-dir", str(workdir / name)]))
                    sender = stack.enter_context(ServiceProcess("sender", ["--chunk-span-factor", str(factor)]))
                    pairs.append(Pair(factor, sender, receiver))
            for pair in pairs:  # warm-up: pools started, the image read once
                pair.migrate(image, size, touched, connections)
            for round_number in range(rounds):
                for pair in pairs if round_number % 2 == 0 else pairs[::-1]:
                    warm_free_memory(tmpfs_dir(), size + GIB)
                    run = pair.migrate(image, size, touched, connections)
                    runs[pair.factor].append(run)
                    print(
                        f"{touched:.0%} touched, round {round_number + 1}, factor {pair.factor}: {run.ms:.0f} ms, "
                        f"{run.batches} batches, sender {run.sender:.3f} / receiver {run.receiver:.3f} CPU s/GiB",
                        flush=True,
                    )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_in_mib_by_default, default="2G", help="guest size; default 2G")
    parser.add_argument("--touched", default="0.1,0.2,0.5", help="fractions of pages written, at random")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--factors", default="1,4", help="--chunk-span-factor values compared; default 1,4")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    try:
        ratios = [float(x) for x in args.touched.split(",")]
        factors = [int(x) for x in args.factors.split(",")]
    except ValueError:
        parser.error("--touched and --factors: comma-separated numbers")
    if not all(0 < ratio <= 1 for ratio in ratios):
        parser.error("--touched: fractions in (0, 1]")
    if not all(1 <= factor <= 16 for factor in factors) or len(set(factors)) != len(factors):
        parser.error("--factors: distinct whole numbers from 1 to 16")
    if not 1 <= args.connections <= 16 or args.rounds < 1:
        parser.error("--connections: 1 to 16; --rounds: at least 1")
    if args.size < DEFAULT_MAX_BATCH_BYTES * args.connections:
        parser.error(f"--size: at least one {DEFAULT_MAX_BATCH_BYTES >> 20} MiB batch per connection")
    _used, available = memory_state(tmpfs_dir())
    if 2 * args.size + GIB > available:  # the image, a destination, the warm-up's extra GiB
        parser.error(f"--size: needs 2x the guest and 1 GiB on tmpfs, {available >> 20} MiB available")
    print(memory_state_line(tmpfs_dir()))
    results = {ratio: measure(args.size, ratio, args.connections, factors, args.rounds) for ratio in ratios}
    base = factors[0]
    header = "| touched | factor | ms | batches | sender CPU s/GiB | receiver CPU s/GiB | time / factor " + str(base)
    print(f"\nmedians of {args.rounds * PAIRS_PER_FACTOR} ({args.connections} connections, {args.size >> 20} MiB)")
    if args.markdown:
        print(header + " |\n|---|---|---|---|---|---|---|")
    for ratio, runs in results.items():
        base_ms = statistics.median(run.ms for run in runs[base])
        for factor in factors:
            ms = statistics.median(run.ms for run in runs[factor])
            cells = [
                f"{ratio:.0%}",
                str(factor),
                f"{ms:.0f}",
                f"{statistics.median(run.batches for run in runs[factor]):.0f}",
                f"{statistics.median(run.sender for run in runs[factor]):.3f}",
                f"{statistics.median(run.receiver for run in runs[factor]):.3f}",
                f"{ms / base_ms:.2f}",
            ]
            print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
