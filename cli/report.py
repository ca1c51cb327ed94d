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


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Callable[[pb.MigrationStatus], None]]:
    """Yields an on_update callback; draws a bar on a terminal, nothing otherwise."""
    if not enabled:
        yield lambda _status: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = bar.add_task("migrating", total=None)

    def on_update(status: pb.MigrationStatus) -> None:
        bar.update(
            task,
            total=status.stats.total_bytes or None,
            completed=status.stats.processed_bytes,
            description=pb.MigrationState.Name(status.state).lower(),
        )

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
        ("duration", f"{stats.duration_ms} ms"),
        ("connections", str(stats.connections)),
        ("verified", "yes" if stats.verified else "no"),
    ]
    if status.error:
        rows.append(("error", status.error))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for region in status.destination_regions:
        console.print(f"destination region gpa={region.gpa:#x} length={region.length}: {region.path}")
