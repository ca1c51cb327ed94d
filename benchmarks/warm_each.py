"""Does warming free memory before a run change QEMU, livemig and the floor alike?

Usage: .venv/bin/python benchmarks/warm_each.py [--size 2G] [--touched 1] [--connections 2] [--rounds 6]

qemu_compare.py writes and removes the guest's size and 1 GiB more on tmpfs right
before every measured migration (--warm-each), so that no side meets pages the VM's
host has taken back because of what ran before it (docs/benchmarks.md, stop 19).
This checks that the warm-up itself favours no side. Each round runs each side
twice, once right after a warm-up and once without, in an order shuffled per round
(fixed seed), so what precedes a run varies. It prints each side's median with and
without, and the ratios between sides both ways. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics

from loopback import loopback
from qemu_compare import QEMU, qemu_migrate

from livemig.cli.bench import GIB, memory_state, memory_state_line, warm_free_memory
from livemig.cli.ceiling import Floor
from livemig.cli.images import tmpfs_dir
from livemig.cli.units import size_in_mib_by_default
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

SIDES = ("qemu", "livemig", "floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_in_mib_by_default, default="2G", help="guest size; default 2G")
    parser.add_argument("--touched", type=float, default=1.0, help="fraction of pages written; default 1")
    parser.add_argument("--connections", type=int, default=2, help="livemig connections = QEMU channels")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if args.size < DEFAULT_MAX_BATCH_BYTES * args.connections:
        parser.error(f"--size: at least one {DEFAULT_MAX_BATCH_BYTES >> 20} MiB batch per connection")
    if not 0 < args.touched <= 1:
        parser.error("--touched: a fraction in (0, 1]")
    if not 1 <= args.connections <= 16 or args.rounds < 1:
        parser.error("--connections: 1 to 16; --rounds: at least 1")
    _used, available = memory_state(tmpfs_dir())
    if 4 * args.size + GIB > available:  # two images, two destinations, the warm-up's extra GiB
        parser.error(f"--size: needs 4x the guest and 1 GiB on tmpfs, {available >> 20} MiB available")
    binary = shutil.which(QEMU)
    if binary is None:
        print(f"skipped: {QEMU} is not installed (Debian: apt-get install qemu-system-x86)")
        return
    print(memory_state_line(tmpfs_dir()))
    size, warm = args.size, args.size + GIB
    payload = max(int(size * args.touched), DEFAULT_MAX_BATCH_BYTES)
    order = random.Random(19)
    runs: dict[tuple[str, bool], list[float]] = {}
    with (
        loopback("livemig-warm-each-", size, args.touched, connections=args.connections, skip_zero_pages=True) as pair,
        Floor(args.connections, DEFAULT_MAX_BATCH_BYTES) as floor,
    ):
        image = pair.workdir / "guest.img"
        qemu_source = pair.workdir / "qemu-source.mem"
        shutil.copyfile(image, qemu_source)  # QEMU's RAM holds the same bytes
        for round_number in range(args.rounds):
            plan = [(side, warmed) for side in SIDES for warmed in (True, False)]
            order.shuffle(plan)
            for side, warmed in plan:
                if warmed:
                    warm_free_memory(tmpfs_dir(), warm)
                if side == "qemu":
                    ms = qemu_migrate(binary, qemu_source, size, args.connections, pair.workdir, None).ms
                elif side == "livemig":
                    ms = float(pair.migrate())
                else:
                    ms = payload / floor.measure(payload, args.connections, image) * 1000
                runs.setdefault((side, warmed), []).append(ms)
                state = "warmed" if warmed else "not warmed"
                print(f"round {round_number + 1}: {side}, {state}: {ms:.0f} ms", flush=True)
    medians = {key: statistics.median(values) for key, values in runs.items()}
    print(f"\nmedians of {args.rounds}, ms: side, warmed / not warmed")
    for side in SIDES:
        print(f"  {side}: {medians[side, True]:.0f} / {medians[side, False]:.0f}")
    for warmed in (True, False):
        qemu, livemig, floor_ms = (medians[side, warmed] for side in SIDES)
        print(
            f"{'warmed' if warmed else 'not warmed'}: livemig / QEMU {livemig / qemu:.2f}, "
            f"livemig / floor {livemig / floor_ms:.2f}, floor / QEMU {floor_ms / qemu:.2f}"
        )


if __name__ == "__main__":
    main()
