"""`livemig bench-live`: the seed's memtouch rows, a running guest migrated live.

For each touch ratio a `livemig memtouch` guest writes memory at a steady rate
while it is migrated with its dirty map, skip vs no-skip; the table shows total
time, iterations, and the measured downtime against the final estimate (the
targets: within 25 % or 20 ms of it, and at most target + 50 ms).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from livemig.cli.client import run_migration
from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import GuestProcess, ServiceProcess
from livemig.cli.report import human_bytes, print_table
from livemig.common.proto import livemig_pb2 as pb


@dataclass
class LiveCase:
    touched: float
    connections: int
    skip: bool
    status: pb.MigrationStatus

    @property
    def estimate_ms(self) -> int:
        return self.status.stats.expected_downtime_ms

    @property
    def downtime_ms(self) -> int:
        return self.status.stats.downtime_ms

    def within_estimate(self) -> bool:
        error = abs(self.downtime_ms - self.estimate_ms)
        return error <= max(20, 0.25 * self.estimate_ms)


def run_live_bench(
    size: int,
    touched: list[float],
    connections: list[int],
    rate_mib: float,
    downtime_ms: int,
    repeat: int,
    markdown: bool,
) -> None:
    console = Console(width=200)
    workdir = Path(tempfile.mkdtemp(prefix="livemig-bench-live-", dir=tmpfs_dir()))
    cases: list[LiveCase] = []
    try:
        with (
            ServiceProcess("receiver", ["--memory-dir", str(workdir / "destination")]) as rx,
            ServiceProcess("sender", []) as tx,
        ):
            for ratio in touched:
                memory = workdir / "guest.img"
                guest = GuestProcess(
                    memory,
                    [
                        "--size-mib",
                        str(size >> 20),
                        "--touch-ratio",
                        str(ratio),
                        "--rate",
                        str(rate_mib),
                        "--threads",
                        "2",
                        "--zero-ratio",
                        "0.1",
                    ],
                )
                try:
                    for _ in range(repeat):
                        for count in connections:
                            for skip in (False, True):
                                region = pb.GuestMemoryRegion(gpa=0, path=str(memory), dirty_log=f"{memory}.dirty")
                                status = run_migration(
                                    tx.address,
                                    pb.StartMigrationRequest(
                                        destination=rx.address,
                                        regions=[region],
                                        connections=count,
                                        skip_zero_pages=skip,
                                        guest_pid=guest.pid,
                                        downtime_ms=downtime_ms,
                                        timeout_ms=60_000,
                                        timeout_strategy=pb.TIMEOUT_STRATEGY_FORCE,
                                    ),
                                )
                                guest.resume()
                                for region_out in status.destination_regions:
                                    shutil.rmtree(Path(region_out.path).parent, ignore_errors=True)
                                cases.append(LiveCase(ratio, count, skip, status))
                finally:
                    guest.close()
                    memory.unlink(missing_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _print(console, cases, size, rate_mib, downtime_ms, markdown)


def _print(
    console: Console, cases: list[LiveCase], size: int, rate_mib: float, downtime_ms: int, markdown: bool
) -> None:
    headers = [
        "setup",
        "state",
        "time",
        "% of no skip",
        "iterations",
        "transmitted",
        "zeroed records",
        "expected downtime",
        "measured downtime",
        "within 25%/20 ms",
        f"<= {downtime_ms}+50 ms",
    ]
    baseline: dict[tuple[float, int], int] = {}
    rows = []
    for case in cases:
        stats = case.status.stats
        key = (case.touched, case.connections)
        if not case.skip:
            baseline[key] = max(stats.duration_ms, 1)
        rows.append(
            [
                f"{human_bytes(size)}, {case.touched:.0%} memtouch at {rate_mib:g} MiB/s, "
                f"{'with' if case.skip else 'no'} skip, {case.connections} conn",
                pb.MigrationState.Name(case.status.state),
                f"{stats.duration_ms} ms",
                f"{100 * stats.duration_ms / baseline.get(key, stats.duration_ms or 1):.0f}%",
                str(stats.iterations),
                human_bytes(stats.transmitted_bytes),
                human_bytes(stats.zeroed_bytes),
                f"{case.estimate_ms} ms",
                f"{case.downtime_ms} ms",
                "yes" if case.within_estimate() else "no",
                "yes" if case.downtime_ms <= downtime_ms + 50 else "no",
            ]
        )
    print_table(console, f"livemig bench-live: downtime target {downtime_ms} ms", headers, rows, markdown)
