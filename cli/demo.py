"""`livemig demo`: the whole product in under a minute on loopback.

A generated guest image on tmpfs (half its pages touched) is migrated by real
receiver and sender processes, without and with zero-page skipping, each
migration verified by digest and compared byte for byte; then a table like the
seed's. The ratio it prints must be one a benchmark would confirm: the first
migration of a fresh sender pays for starting its connection processes (and the
receiver for its first session), so one warm-up migration goes first, unshown,
and then each setup runs ROUNDS times in alternating order, the table showing
each setup's median run.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from livemig.cli.client import run_migration
from livemig.cli.images import files_equal, make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess
from livemig.cli.report import human_bytes
from livemig.common.proto import livemig_pb2 as pb

ROUNDS = 3  # runs of each setup: no skip, skip; skip, no skip; no skip, skip

Run = tuple[pb.MigrationStatus, bool]  # the final status, and whether the destination equals the source


def run_demo(size: int, touched: float, connections: int) -> int:
    console = Console(width=None if Console().is_terminal else 120)
    workdir = Path(tempfile.mkdtemp(prefix="livemig-demo-", dir=tmpfs_dir()))
    try:
        image = workdir / "guest-memory.img"
        touched_pages = make_image(image, size, touched, seed=42)
        console.print(f"guest memory: {human_bytes(size)} at {image} ({touched_pages} of {size // 4096} pages touched)")
        with (
            ServiceProcess("receiver", ["--memory-dir", str(workdir / "destination")], workdir / "receiver.log") as rx,
            ServiceProcess("sender", [], workdir / "sender.log") as tx,
        ):
            console.print(f"receiver on {rx.address}, sender on {tx.address}")
            warm_up = _migrate(tx.address, rx.address, image, connections, skip=False)
            runs: dict[bool, list[Run]] = {False: [], True: []}
            for round_ in range(ROUNDS):
                for skip in (False, True) if round_ % 2 == 0 else (True, False):
                    runs[skip].append(_migrate(tx.address, rx.address, image, connections, skip))
        results = [(skip, *_median(runs[skip])) for skip in (False, True)]
        console.print(_table(results, connections))
        failures = [status for status, identical in [warm_up, *runs[False], *runs[True]] if not identical]
        for status in failures:
            console.print(
                f"[red]migration {status.migration_id} {pb.MigrationState.Name(status.state)}: {status.error}"
            )
        if not failures:
            console.print(
                f"[green]all {1 + 2 * ROUNDS} migrations COMPLETED; destination identical to source byte for byte"
            )
        return 1 if failures else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _migrate(sender: str, receiver: str, image: Path, connections: int, skip: bool) -> Run:
    """One verified migration of `image`, compared byte for byte; its destination is removed after."""
    request = pb.StartMigrationRequest(
        destination=receiver,
        regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
        connections=connections,
        skip_zero_pages=skip,
        verify=True,
    )
    status = run_migration(sender, request)
    regions = status.destination_regions
    identical = status.state == pb.COMPLETED and all(files_equal(image, Path(r.path)) for r in regions)
    for region in regions:
        shutil.rmtree(Path(region.path).parent, ignore_errors=True)
    return status, identical


def _median(runs: list[Run]) -> Run:
    """The run of median duration (ROUNDS is odd: one of them)."""
    return sorted(runs, key=lambda run: run[0].stats.duration_ms)[len(runs) // 2]


def _table(results: list[tuple[bool, pb.MigrationStatus, bool]], connections: int) -> Table:
    table = Table(title=f"livemig demo (loopback; each setup's median of {ROUNDS} runs, after a warm-up)")
    for column in ("setup", "time", "% of no skip", "skipped", "transmitted", "throughput (wire)", "verified"):
        table.add_column(column, justify="left" if column == "setup" else "right")
    baseline = max(results[0][1].stats.duration_ms, 1)
    for skip, status, identical in results:
        stats = status.stats
        table.add_row(
            f"{'with' if skip else 'no'} skip, {connections} connection{'s' if connections > 1 else ''}",
            f"{stats.duration_ms} ms",
            f"{100 * stats.duration_ms / baseline:.0f}%",
            human_bytes(stats.zero_bytes),
            human_bytes(stats.transmitted_bytes),
            f"{human_bytes(stats.throughput_bytes_per_second)}/s",
            "yes" if stats.verified and identical else "NO",
        )
    return table
