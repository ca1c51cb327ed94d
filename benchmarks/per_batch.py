"""What one batch costs beyond its bytes: livemig's processes against bare gRPC's, in one run.

Usage: .venv/bin/python benchmarks/per_batch.py [--size 512M] [--small-kib 256] [--repeat 3]

A migration's CPU is a cost per byte (reading, copying, writing) plus a cost per
batch: building and framing it, handing it between threads, reporting it to the
control process, acknowledging it. The second is invisible at 8 MiB batches
under the first and under this machine's noise, so this script magnifies it: it
migrates the same fully written image with the default batch size and with small
batches (--small-kib), and the difference in CPU over the difference in batch
count is the cost of one more batch, role by role (sender control process,
connection processes, receiver control process, data workers). The bare gRPC
process pairs (cli/ceiling.py: the same windowed stream, no reading, no writing)
are measured the same way in the same run: their cost per message is what gRPC's
Python API itself takes, the floor of a batch. The rest is livemig's.

Medians of --repeat, every case measured in turn (machine drift hits each alike).
Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack

from loopback import Loopback, loopback

from livemig.cli.bench import memory_state, memory_state_line
from livemig.cli.ceiling import Ceiling
from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import cpu_seconds, process_tree
from livemig.cli.report import human_bytes
from livemig.cli.units import size_in_mib_by_default
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

CONNECTIONS = 2
ROLES = ("sender control", "connection processes", "receiver control", "data workers")


def role_cpu(pair: Loopback) -> dict[str, float]:
    """CPU seconds so far of each role's processes (children looked up now: pools restart)."""
    sender_children = [pid for pid in process_tree(pair.sender.pid) if pid != pair.sender.pid]
    receiver_children = [pid for pid in process_tree(pair.receiver.pid) if pid != pair.receiver.pid]
    return {
        "sender control": cpu_seconds(pair.sender.pid),
        "connection processes": sum(cpu_seconds(pid) for pid in sender_children),
        "receiver control": cpu_seconds(pair.receiver.pid),
        "data workers": sum(cpu_seconds(pid) for pid in receiver_children),
    }


def migration_cpu(pair: Loopback) -> dict[str, float]:
    """One migration's CPU seconds by role."""
    before = role_cpu(pair)
    pair.migrate()
    after = role_cpu(pair)
    return {role: after[role] - before[role] for role in ROLES}


def ceiling_cpu(ceiling: Ceiling, size: int) -> tuple[float, float]:
    """One bare gRPC measurement: (client, server) CPU seconds for `size` bytes."""
    ceiling.measure(size, CONNECTIONS)
    client, server = ceiling.cpu_per_gib[CONNECTIONS]
    gib = size / (1 << 30)
    return client * gib, server * gib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=size_in_mib_by_default, default=512 << 20, help="image size (default 512M)")
    parser.add_argument("--small-kib", type=int, default=256, help="the small batches, KiB (default 256)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    big, small = DEFAULT_MAX_BATCH_BYTES, args.small_kib << 10
    if not 64 << 10 <= small < big:
        parser.error(f"--small-kib is from 64 (the sender's smallest batch) to {(big >> 10) - 1}, below the default")
    if args.repeat < 1:
        parser.error("--repeat is at least 1")
    size = args.size - args.size % big
    if size < CONNECTIONS * big:
        parser.error(f"--size is at least {CONNECTIONS * big >> 20}M: a default batch for each connection")
    # Two images and, during a migration, a destination of each: four times the size.
    _used, available = memory_state(tmpfs_dir())
    if 4 * size > available:
        need, have = human_bytes(4 * size), human_bytes(available)
        parser.error(f"--size {human_bytes(size)} needs about {need} of memory; {have} is available")
    print(memory_state_line(tmpfs_dir()))
    extra_batches = size // small - size // big
    print(
        f"{size >> 20} MiB written in full, {CONNECTIONS} connections; batches of {big >> 20} MiB and {small >> 10} KiB"
    )

    livemig: dict[int, list[dict[str, float]]] = {big: [], small: []}
    bare: dict[int, list[tuple[float, float]]] = {big: [], small: []}
    with ExitStack() as stack:
        pairs = {
            batch: stack.enter_context(
                loopback(
                    f"per-batch-{batch >> 10}k-",
                    size,
                    1.0,
                    ["--max-batch-bytes", str(big)],
                    connections=CONNECTIONS,
                    skip_zero_pages=True,
                    max_batch_bytes=batch,
                )
            )
            for batch in (big, small)
        }
        ceilings = {batch: stack.enter_context(Ceiling(CONNECTIONS, batch)) for batch in (big, small)}
        for batch in (big, small):
            ceiling_cpu(ceilings[batch], size)  # warm: connections made, pages touched
        for round_ in range(args.repeat):
            for batch in (big, small) if round_ % 2 == 0 else (small, big):
                livemig[batch].append(migration_cpu(pairs[batch]))
                bare[batch].append(ceiling_cpu(ceilings[batch], size))

    def per_batch(values: dict[int, list[float]]) -> float:
        """µs of CPU per extra batch, from medians."""
        return (statistics.median(values[small]) - statistics.median(values[big])) / extra_batches * 1e6

    print(f"\nCPU per batch beyond its bytes (µs), medians of {args.repeat}:")
    print(f"{'':24} {'livemig':>9} {'bare gRPC':>10}")
    rows = {role: per_batch({b: [r[role] for r in livemig[b]] for b in livemig}) for role in ROLES}
    client = per_batch({b: [c for c, _s in bare[b]] for b in bare})
    server = per_batch({b: [s for _c, s in bare[b]] for b in bare})
    for role in ROLES:
        floor = client if role == "connection processes" else server if role == "data workers" else None
        print(f"{role:24} {rows[role]:9.0f} {'' if floor is None else f'{floor:10.0f}'}")
    sender = rows["sender control"] + rows["connection processes"]
    receiver = rows["receiver control"] + rows["data workers"]
    print(f"{'sender, all processes':24} {sender:9.0f} {client:10.0f}")
    print(f"{'receiver, all processes':24} {receiver:9.0f} {server:10.0f}")
    per_gib = (1 << 30) // big
    livemig_per_gib = (sender + receiver) * per_gib / 1e6
    bare_per_gib = (client + server) * per_gib / 1e6
    print(
        f"\nAt {big >> 20} MiB batches ({per_gib} per GiB written) livemig's batches cost "
        f"{livemig_per_gib:.3f} CPU s per GiB, bare gRPC's messages {bare_per_gib:.3f}."
    )


if __name__ == "__main__":
    main()
