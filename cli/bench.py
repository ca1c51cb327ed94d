"""`livemig bench`: scaling with connections, skip against no-skip, and the N-process-pair ceiling.

Every case runs between the same two service processes; cases are compared
side by side in one run because machines are noisy. A service's CPU and peak
RSS are its whole process tree's (connection processes, data workers).
Figures, never pass/fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from livemig.cli.ceiling import Ceiling
from livemig.cli.client import run_migration
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess, TreePeakSampler, tree_cpu_seconds
from livemig.cli.report import human_bytes, print_table
from livemig.common.proto import livemig_pb2 as pb

MIB = 1 << 20
GIB = 1 << 30


@dataclass
class Case:
    touched: float
    connections: int
    skip: bool
    duration_ms: int
    transmitted: int
    wire: int
    throughput: float
    payload_throughput: float
    sender_peak_memory: int
    receiver_peak_memory: int
    sender_cpu: float
    receiver_cpu: float
    allocated: int
    ok: bool
    allocated_zeros: bool = False
    moved: int = 0  # guest bytes the migration covered (zero pages included)
    batches: int = 0


def measure_case(
    tx: ServiceProcess,
    rx: ServiceProcess,
    image: Path,
    touched: float,
    connections: int,
    skip: bool,
    batch_bytes: int,
    peak_memory: bool = True,
) -> Case:
    """One migration of `image` between running services, with the CPU of both trees and,
    with `peak_memory`, their peak RSS. Sampling it reads every member's smaps every
    250 ms: 0.1 CPU s per 2 GiB migration in this process and 2-5 % longer migrations
    on 2 cores (8 rounds alternating), so comparisons against sides that sample
    nothing (benchmarks/qemu_compare.py) leave it out."""
    cpu_before = tree_cpu_seconds(tx.pid), tree_cpu_seconds(rx.pid)
    sampler = TreePeakSampler([tx.pid, rx.pid]) if peak_memory else contextlib.nullcontext()
    with sampler as rss:  # connection processes end with the migration
        status = run_migration(
            tx.address,
            pb.StartMigrationRequest(
                destination=rx.address,
                regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
                connections=connections,
                skip_zero_pages=skip,
                max_batch_bytes=batch_bytes,
            ),
        )
    # Without shared mappings: in mapped write mode each data worker maps destination memory.
    sender_peak_memory, receiver_peak_memory = (
        (rss.proportional_peaks[tx.pid], rss.proportional_peaks[rx.pid]) if rss is not None else (0, 0)
    )
    stats = status.stats
    allocated = sum(os.stat(r.path).st_blocks * 512 for r in status.destination_regions)
    for region in status.destination_regions:
        shutil.rmtree(Path(region.path).parent, ignore_errors=True)
    seconds = max(stats.duration_ms, 1) / 1000
    return Case(
        touched=touched,
        connections=connections,
        skip=skip,
        duration_ms=stats.duration_ms,
        transmitted=stats.transmitted_bytes,
        wire=stats.wire_bytes,
        throughput=stats.throughput_bytes_per_second,
        payload_throughput=stats.transmitted_bytes / seconds,
        sender_peak_memory=sender_peak_memory,
        receiver_peak_memory=receiver_peak_memory,
        sender_cpu=tree_cpu_seconds(tx.pid) - cpu_before[0],
        receiver_cpu=tree_cpu_seconds(rx.pid) - cpu_before[1],
        allocated=allocated,
        ok=status.state == pb.COMPLETED,
        moved=stats.total_bytes,
        batches=stats.batches,
    )


def receiver_args(
    destination: Path, batch_bytes: int, data_workers: int | None, write_mode: str | None = None
) -> list[str]:
    """The receiver's command line; None keeps the receiver's own default."""
    args = ["--memory-dir", str(destination), "--max-batch-bytes", str(batch_bytes)]
    if data_workers is not None:
        args += ["--data-workers", str(data_workers)]
    if write_mode is not None:
        args += ["--write-mode", write_mode]
    return args


def run_bench(
    size: int,
    connections: list[int],
    touched: list[float],
    batch_bytes: int,
    repeat: int,
    markdown: bool,
    destination_dir: Path | None = None,
    pattern: str = "random",
    receiver_data_workers: int | None = None,
    receiver_write_mode: str | None = None,
) -> None:
    console = Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="livemig-bench-", dir=tmpfs_dir()))
    destination = Path(tempfile.mkdtemp(prefix="livemig-bench-dst-", dir=destination_dir or workdir))
    cases: list[Case] = []
    try:
        with (
            Ceiling(max(connections), batch_bytes) as ceiling,
            ServiceProcess(
                "receiver", receiver_args(destination, batch_bytes, receiver_data_workers, receiver_write_mode)
            ) as rx,
            ServiceProcess("sender", []) as tx,
        ):
            ceilings = {n: ceiling.measure(size, n) for n in connections}
            ceiling_cpu = dict(ceiling.cpu_per_gib)
            images = [(ratio, False) for ratio in touched]
            if 0.0 in touched:  # also zeros the guest wrote: no holes to skip, every page is read
                images.insert(touched.index(0.0) + 1, (0.0, True))
            for ratio, allocate in images:
                image = workdir / "guest.img"
                make_image(image, size, ratio, seed=7, allocate=allocate, pattern=pattern)
                # Warm-up: the first migration after an image is written runs slow (the
                # kernel is still settling the fresh tmpfs pages); it is not measured.
                measure_case(tx, rx, image, ratio, connections[0], False, batch_bytes)
                runs: dict[tuple[int, bool], list[Case]] = {}
                for _ in range(repeat):  # interleaved, so drift hits every case alike
                    for count in connections:
                        for skip in (False, True):
                            case = measure_case(tx, rx, image, ratio, count, skip, batch_bytes)
                            case.allocated_zeros = allocate
                            runs.setdefault((count, skip), []).append(case)
                cases.extend(min(r, key=lambda c: c.duration_ms) for r in runs.values())
                image.unlink()
    finally:
        shutil.rmtree(destination, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    _print(console, cases, ceilings, size, batch_bytes, markdown, pattern, ceiling_cpu)


# Pure helpers for the tables (tested in tests/test_bench_tables.py).


# Files left on tmpfs from earlier runs above this make a benchmark's figures untrue here.
TMPFS_LEFTOVER_WARNING_BYTES = 1 << 30


def memory_state(tmpfs: Path) -> tuple[int, int]:
    """(bytes in use on the tmpfs holding images and destinations, MemAvailable bytes).

    On this VM both ends' page allocation slows by a third when 6 GiB of old files sit on
    /dev/shm (receiver 1.60 against 1.15 CPU s/GiB, docs/benchmarks.md, issue 25), so a
    benchmark states them before it starts."""
    usage = shutil.disk_usage(tmpfs)
    available = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    return usage.used, available


def memory_state_line(tmpfs: Path) -> str:
    """One line for a benchmark's header, with a warning where old files fill tmpfs."""
    used, available = memory_state(tmpfs)
    line = f"{tmpfs}: {human_bytes(used)} in use before the run; MemAvailable {human_bytes(available)}"
    if used > TMPFS_LEFTOVER_WARNING_BYTES:
        line += f" (warning: files left on {tmpfs} slow every side's page allocation here; remove them first)"
    return line


def warm_free_memory(tmpfs: Path, size: int) -> int:
    """Write `size` bytes (at most half of MemAvailable) to a file on `tmpfs` and remove it;
    returns the bytes written. On this VM the first rounds of a benchmark after the
    machine sat idle or ran other work were slow for every side that allocates fresh
    pages (receiver 2.08 falling to 1.23 CPU s/GiB over five rounds, QEMU and bare gRPC
    unchanged: docs/benchmarks.md, issue 25): pages the guest has not touched lately
    cost more to touch again. Touching them once before the first measurement gives
    every side, and every round, the same start."""
    size = min(size, memory_state(tmpfs)[1] // 2)
    block = bytes(64 << 20)
    fd, name = tempfile.mkstemp(prefix="livemig-warm-", dir=tmpfs)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(name)
    return size // len(block) * len(block)


def gib_per_second(byte_count: float, seconds: float) -> float:
    return byte_count / GIB / max(seconds, 1e-9)


def cpu_per_gib(cpu_seconds: float, moved_bytes: int) -> float:
    """CPU seconds per GiB of guest memory moved (zero pages included, skipped or sent)."""
    return cpu_seconds / (moved_bytes / GIB) if moved_bytes else 0.0


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f} %" if whole else "-"


def image_label(touched: float, allocated_zeros: bool, pattern: str) -> str:
    runs = " in runs" if pattern == "runs" and 0 < touched < 1 else ""
    return f"{touched:.0%} touched{runs}{' (zeros written)' if allocated_zeros else ''}"


def _key(case: Case) -> tuple[float, bool]:
    return case.touched, case.allocated_zeros


def scaling_rows(cases: Sequence[Case], ceilings: dict[int, float], pattern: str = "random") -> list[list[str]]:
    """One row per image, skip mode and connection count.

    "x first" is the speed-up over the first connection count of the same image and
    skip mode (time ratio, so it also holds where skipping sends nothing); "% of
    ceiling" compares payload throughput with N process pairs of bare gRPC.
    """
    first: dict[tuple[float, bool, bool], Case] = {}
    no_skip: dict[tuple[float, bool, int], Case] = {}
    for case in cases:
        first.setdefault((*_key(case), case.skip), case)
        if not case.skip:
            no_skip[(*_key(case), case.connections)] = case
    rows = []
    for case in cases:
        base = first[(*_key(case), case.skip)]
        plain = no_skip.get((*_key(case), case.connections))
        payload = gib_per_second(case.transmitted, case.duration_ms / 1000)
        ceiling = ceilings.get(case.connections, 0.0) / GIB
        rows.append(
            [
                f"{image_label(case.touched, case.allocated_zeros, pattern)}, "
                f"{'with' if case.skip else 'no'} skip, {case.connections} conn",
                f"{case.duration_ms} ms",
                f"{payload:.2f}",
                f"{base.duration_ms / max(case.duration_ms, 1):.2f}x",
                percent(payload, ceiling) if case.transmitted else "-",
                f"{cpu_per_gib(case.sender_cpu, case.moved):.2f}",
                f"{cpu_per_gib(case.receiver_cpu, case.moved):.2f}",
                percent(case.duration_ms, plain.duration_ms) if case.skip and plain else "",
                "yes" if case.ok else "NO",
            ]
        )
    return rows


SCALING_HEADERS = [
    "setup",
    "time",
    "payload GiB/s",
    "speed-up over first conn count",
    "% of ceiling (N process pairs)",
    "sender CPU s per GiB moved",
    "receiver CPU s per GiB moved",
    "skip time as % of no-skip",
    "ok",
]


def summary_rows(
    cases: Sequence[Case],
    ceilings: dict[int, float],
    connections: Sequence[int],
    pattern: str = "random",
    ceiling_cpu: dict[int, tuple[float, float]] | None = None,
) -> list[list[str]]:
    """The issue's matrix: one column per connection count.

    Per image: no-skip payload GiB/s and skip time as % of no-skip; then the
    ceiling of N process pairs.
    """
    by_key = {(*_key(c), c.skip, c.connections): c for c in cases}
    images = list(dict.fromkeys(_key(c) for c in cases))
    rows = []
    for touched, zeros in images:
        label = image_label(touched, zeros, pattern)
        plain = [by_key.get((touched, zeros, False, n)) for n in connections]
        skipped = [by_key.get((touched, zeros, True, n)) for n in connections]
        if touched > 0:
            rows.append(
                [f"{label}, no skip, payload GiB/s"]
                + [f"{gib_per_second(c.transmitted, c.duration_ms / 1000):.2f}" if c else "" for c in plain]
            )
        rows.append(
            [f"{label}: skip time as % of no-skip"]
            + [percent(s.duration_ms, p.duration_ms) if s and p else "" for s, p in zip(skipped, plain, strict=True)]
        )
    rows.append(["ceiling: N process pairs of bare gRPC, GiB/s"] + [f"{ceilings[n] / GIB:.2f}" for n in connections])
    if ceiling_cpu:  # what gRPC alone costs per GiB: the floor under the services' CPU figures
        for side, label in ((0, "client"), (1, "server")):
            rows.append(
                [f"ceiling: {label} CPU s per GiB streamed"]
                + [f"{ceiling_cpu[n][side]:.2f}" if n in ceiling_cpu else "" for n in connections]
            )
    return rows


def _print(
    console: Console,
    cases: list[Case],
    ceilings: dict[int, float],
    size: int,
    batch_bytes: int,
    markdown: bool,
    pattern: str = "random",
    ceiling_cpu: dict[int, tuple[float, float]] | None = None,
) -> None:
    connections = list(dict.fromkeys(c.connections for c in cases)) or list(ceilings)

    def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
        if markdown:
            console.print(f"\n**{title}**\n", soft_wrap=True)
        print_table(console, title, headers, rows, markdown)

    guest = f"{human_bytes(size)} guest, {human_bytes(batch_bytes)} batches"
    table(
        f"livemig bench, summary: {guest}",
        ["connections", *[str(n) for n in connections]],
        summary_rows(cases, ceilings, connections, pattern, ceiling_cpu),
    )
    table(
        f"livemig bench, scaling: {guest}; CPU is each service's whole process tree, "
        "per GiB moved (moved = total guest bytes, zero pages included)",
        SCALING_HEADERS,
        scaling_rows(cases, ceilings, pattern),
    )
    table(f"livemig bench, detail: {guest}", DETAIL_HEADERS, detail_rows(cases, size, pattern))


DETAIL_HEADERS = [
    "setup",
    "time",
    "transmitted",
    "wire throughput",
    "payload throughput",
    "sender CPU",
    "receiver CPU",
    "sender peak memory (tree PSS, sampled)",
    "receiver peak memory (tree PSS, sampled)",
    "dest. allocated",
]


def detail_rows(cases: Sequence[Case], size: int, pattern: str = "random") -> list[list[str]]:
    return [
        [
            f"{human_bytes(size)}, {image_label(case.touched, case.allocated_zeros, pattern)}, "
            f"{'with' if case.skip else 'no'} skip, {case.connections} conn",
            f"{case.duration_ms} ms",
            human_bytes(case.transmitted),
            f"{human_bytes(case.throughput)}/s",
            f"{human_bytes(case.payload_throughput)}/s",
            f"{case.sender_cpu:.2f} s",
            f"{case.receiver_cpu:.2f} s",
            human_bytes(case.sender_peak_memory),
            human_bytes(case.receiver_peak_memory),
            human_bytes(case.allocated),
        ]
        for case in cases
    ]
