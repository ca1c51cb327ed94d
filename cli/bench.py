"""`livemig bench`: the seed's table on this machine, with the bare gRPC ceiling beside it.

Every case runs between the same two service processes; cases are compared
side by side in one run because this machine is noisy. Figures, never pass/fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from livemig.cli import ceiling
from livemig.cli.client import run_migration
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess, cpu_seconds, peak_rss_bytes, reset_peak_rss
from livemig.cli.report import human_bytes, print_table
from livemig.common.proto import livemig_pb2 as pb

MIB = 1 << 20


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
    sender_rss: int
    receiver_rss: int
    sender_cpu: float
    receiver_cpu: float
    allocated: int
    ok: bool
    allocated_zeros: bool = False


def _run_case(
    tx: ServiceProcess, rx: ServiceProcess, image: Path, touched: float, connections: int, skip: bool, batch_bytes: int
) -> Case:
    reset_peak_rss(tx.pid)
    reset_peak_rss(rx.pid)
    cpu_before = cpu_seconds(tx.pid), cpu_seconds(rx.pid)
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
        sender_rss=peak_rss_bytes(tx.pid),
        receiver_rss=peak_rss_bytes(rx.pid),
        sender_cpu=cpu_seconds(tx.pid) - cpu_before[0],
        receiver_cpu=cpu_seconds(rx.pid) - cpu_before[1],
        allocated=allocated,
        ok=status.state == pb.COMPLETED,
    )


def _ceiling(size: int, batch_bytes: int, connections: list[int]) -> dict[int, float]:
    process = subprocess.Popen(
        [sys.executable, "-m", "livemig.cli.ceiling", "serve", str(batch_bytes)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        address = line.strip().rsplit(" ", 1)[-1]
        return {n: ceiling.measure(address, size, batch_bytes, n) for n in connections}
    finally:
        process.terminate()
        process.wait()


def run_bench(
    size: int,
    connections: list[int],
    touched: list[float],
    batch_bytes: int,
    repeat: int,
    markdown: bool,
    destination_dir: Path | None = None,
    pattern: str = "random",
) -> None:
    console = Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="livemig-bench-", dir=tmpfs_dir()))
    destination = Path(tempfile.mkdtemp(prefix="livemig-bench-dst-", dir=destination_dir or workdir))
    cases: list[Case] = []
    try:
        with (
            ServiceProcess("receiver", ["--memory-dir", str(destination), "--max-batch-bytes", str(batch_bytes)]) as rx,
            ServiceProcess("sender", []) as tx,
        ):
            ceilings = _ceiling(size, batch_bytes, connections)
            images = [(ratio, False) for ratio in touched]
            if 0.0 in touched:  # also zeros the guest wrote: no holes to skip, every page is read
                images.insert(touched.index(0.0) + 1, (0.0, True))
            for ratio, allocate in images:
                image = workdir / "guest.img"
                make_image(image, size, ratio, seed=7, allocate=allocate, pattern=pattern)
                # Warm-up: the first migration after an image is written runs slow (the
                # kernel is still settling the fresh tmpfs pages); it is not measured.
                _run_case(tx, rx, image, ratio, connections[0], False, batch_bytes)
                runs: dict[tuple[int, bool], list[Case]] = {}
                for _ in range(repeat):  # interleaved, so drift hits every case alike
                    for count in connections:
                        for skip in (False, True):
                            case = _run_case(tx, rx, image, ratio, count, skip, batch_bytes)
                            case.allocated_zeros = allocate
                            runs.setdefault((count, skip), []).append(case)
                cases.extend(min(r, key=lambda c: c.duration_ms) for r in runs.values())
                image.unlink()
    finally:
        shutil.rmtree(destination, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    _print(console, cases, ceilings, size, batch_bytes, markdown, pattern)


def _print(
    console: Console,
    cases: list[Case],
    ceilings: dict[int, float],
    size: int,
    batch_bytes: int,
    markdown: bool,
    pattern: str = "random",
) -> None:
    headers = [
        "setup",
        "time",
        "% of no skip",
        "transmitted",
        "wire throughput",
        "payload throughput",
        "% of gRPC ceiling",
        "sender CPU",
        "receiver CPU",
        "sender peak RSS",
        "receiver peak RSS",
        "dest. allocated",
        "ok",
    ]
    rows = []
    baseline: dict[tuple[float, bool, int], int] = {}
    for case in cases:
        key = (case.touched, case.allocated_zeros, case.connections)
        if not case.skip:
            baseline[key] = max(case.duration_ms, 1)
        rows.append(
            [
                f"{human_bytes(size)}, {case.touched:.0%} touched"
                f"{' in runs' if pattern == 'runs' and 0 < case.touched < 1 else ''}"
                f"{' (zeros written)' if case.allocated_zeros else ''}, "
                f"{'with' if case.skip else 'no'} skip, "
                f"{case.connections} conn",
                f"{case.duration_ms} ms",
                f"{100 * case.duration_ms / baseline[key]:.0f}%",
                human_bytes(case.transmitted),
                f"{human_bytes(case.throughput)}/s",
                f"{human_bytes(case.payload_throughput)}/s",
                f"{100 * case.payload_throughput / ceilings[case.connections]:.0f}%" if case.transmitted else "-",
                f"{case.sender_cpu:.2f} s",
                f"{case.receiver_cpu:.2f} s",
                human_bytes(case.sender_rss),
                human_bytes(case.receiver_rss),
                human_bytes(case.allocated),
                "yes" if case.ok else "NO",
            ]
        )
    for count, value in ceilings.items():
        rows.append(
            [
                f"bare gRPC ceiling, {human_bytes(batch_bytes)} messages, {count} conn",
                "",
                "",
                "",
                f"{human_bytes(value)}/s",
                f"{human_bytes(value)}/s",
                "100%",
                *[""] * (len(headers) - 7),
            ]
        )
    title = f"livemig bench: {human_bytes(size)} guest, {human_bytes(batch_bytes)} batches"
    print_table(console, title, headers, rows, markdown)
