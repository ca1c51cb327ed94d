"""Human output: a progress bar while a migration runs, a statistics table at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from livemig.common.proto import livemig_pb2 as pb


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def iteration_line(iteration: pb.IterationStats) -> str:
    label = "final" if iteration.final else f"iter {iteration.iteration}"
    return (
        f"{label:>8}: dirty {human_bytes(iteration.dirty_bytes)}, sent {human_bytes(iteration.transmitted_bytes)}"
        f" (+{human_bytes(iteration.zeroed_bytes)} zeroed), skipped {human_bytes(iteration.zero_bytes)}"
        f" in {iteration.duration_ms} ms at {human_bytes(iteration.wire_bandwidth_bytes_per_second)}/s;"
        f" remaining {human_bytes(iteration.remaining_bytes)}, expected downtime {iteration.expected_downtime_ms} ms"
    )


@contextlib.contextmanager
def progress(enabled: bool, show_iterations: bool = False) -> Iterator[Callable[[pb.MigrationStatus], None]]:
    """Yields an on_update callback: a bar on a terminal, and one line per finished iteration."""
    console = Console(stderr=True)
    printed = 0

    def print_iterations(status: pb.MigrationStatus) -> None:
        nonlocal printed
        if not (show_iterations and status.live):
            return
        # While running, the newest iteration may still be in progress.
        finished = list(status.iterations) if status.state != pb.RUNNING else list(status.iterations)[:-1]
        for iteration in finished[printed:]:
            console.print(iteration_line(iteration))
        printed = max(printed, len(finished))

    if not enabled:
        yield print_iterations
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("migrating", total=None)

    def on_update(status: pb.MigrationStatus) -> None:
        total = status.stats.total_bytes + sum(i.dirty_bytes for i in status.iterations[1:])
        bar.update(
            task,
            total=total or None,
            completed=status.stats.processed_bytes,
            description=f"{pb.MigrationState.Name(status.state).lower()} {status.phase}",
        )
        print_iterations(status)

    with bar:
        yield on_update


def print_status(status: pb.MigrationStatus, console: Console | None = None) -> None:
    console = console or Console()
    stats = status.stats
    table = Table(title=f"migration {status.migration_id}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("state", pb.MigrationState.Name(status.state)),
        ("guest memory", human_bytes(stats.total_bytes)),
        ("scanned", human_bytes(stats.scanned_bytes)),
        ("skipped (zero)", f"{human_bytes(stats.zero_bytes)} ({stats.zero_pages} pages)"),
        ("transmitted", f"{human_bytes(stats.transmitted_bytes)} ({stats.normal_pages} pages)"),
        ("on the wire", human_bytes(stats.wire_bytes)),
        ("throughput (wire)", f"{human_bytes(stats.throughput_bytes_per_second)}/s"),
        ("duration", f"{stats.duration_ms} ms (setup {stats.setup_ms} ms)"),
        ("connections", str(stats.connections)),
        ("verified", "yes" if stats.verified else "no"),
    ]
    if status.live:
        rows += [
            ("iterations", str(stats.iterations)),
            ("zeroed after sending", human_bytes(stats.zeroed_bytes)),
            ("bandwidth for estimate", f"{human_bytes(stats.bandwidth_bytes_per_second)}/s ({stats.bandwidth_source})"),
            ("expected downtime", f"{stats.expected_downtime_ms} ms"),
        ]
    if status.live or stats.downtime_ms:
        rows.append(
            ("downtime", f"{stats.downtime_ms} ms" + (f" (verify {stats.verify_ms} ms)" if stats.verify_ms else ""))
        )
    if status.error:
        rows.append(("error", status.error))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for region in status.destination_regions:
        console.print(f"destination region gpa={region.gpa:#x} length={region.length}: {region.path}")


def print_table(console: Console, title: str, headers: list[str], rows: list[list[str]], markdown: bool) -> None:
    """A benchmark table: rich on a terminal, Markdown for docs/benchmarks.md."""
    if markdown:
        console.print("| " + " | ".join(headers) + " |", soft_wrap=True)
        console.print("|" + "---|" * len(headers), soft_wrap=True)
        for row in rows:
            console.print("| " + " | ".join(row) + " |", soft_wrap=True)
        return
    table = Table(title=title)
    for header in headers:
        table.add_column(header, justify="left" if header == "setup" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
