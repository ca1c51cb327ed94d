"""Human output: a progress bar while a migration runs, a statistics table at the end.

Binary units everywhere (MiB, MiB/s). The bar shows what the wire carries, not
what was processed: skipped zero pages are never throughput. Where output is not
a terminal (a log collector, `docker compose logs`) nothing is wrapped: one
iteration is one line, one table row is one line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from livemig.cli.units import format_bytes
from livemig.common.proto import livemig_pb2 as pb

NO_WRAP_WIDTH = 1 << 14  # wide enough that rich never wraps a line written to a pipe or file

human_bytes = format_bytes  # the name the benchmarks use


def console_for(file: TextIO | None = None, stderr: bool = False) -> Console:
    """A rich console that wraps only on a terminal."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=stream)
    return Console(file=stream, width=NO_WRAP_WIDTH, soft_wrap=True)


def iteration_line(iteration: pb.IterationStats) -> str:
    label = "final" if iteration.final else f"iter {iteration.iteration}"
    return (
        f"{label:>8}: dirty {human_bytes(iteration.dirty_bytes)}, sent {human_bytes(iteration.transmitted_bytes)}"
        f" (+{human_bytes(iteration.zeroed_bytes)} in zero records), skipped {human_bytes(iteration.zero_bytes)}"
        f" in {iteration.duration_ms} ms at {human_bytes(iteration.wire_bandwidth_bytes_per_second)}/s;"
        f" remaining {human_bytes(iteration.remaining_bytes)}, expected downtime {iteration.expected_downtime_ms} ms"
    )


class WireSpeed:
    """Bytes the wire carried per second between two updates (smoothed), not processed bytes."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None
        self.value = 0.0

    def update(self, wire_bytes: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._last is not None and now > self._last[0]:
            sample = max(0, wire_bytes - self._last[1]) / (now - self._last[0])
            self.value = sample if not self.value else 0.7 * self.value + 0.3 * sample
        self._last = (now, wire_bytes)
        return self.value


def planned_bytes(status: pb.MigrationStatus) -> int:
    """What the migration has to process so far: all memory, plus each later iteration's dirty pages."""
    return status.stats.total_bytes + sum(i.dirty_bytes for i in list(status.iterations)[1:])


def bar_fields(status: pb.MigrationStatus, wire_speed: float) -> dict[str, object]:
    """What the bar shows. A one-pass migration: all memory processed so far. A live one:
    the current iteration (its number, what is left of its dirty pages, the guest's dirty
    rate), so a finished iteration reads as the next one starting, not "100 %, ETA 0"."""
    stats = status.stats
    state = f"{pb.MigrationState.Name(status.state).lower()} {status.phase}"
    iterations = list(status.iterations)
    if not status.live or not iterations:
        total, done = planned_bytes(status), stats.processed_bytes
        details = f"{human_bytes(done)} of {human_bytes(total)}, wire {human_bytes(wire_speed)}/s"
        return {"description": state, "total": total or None, "completed": done, "details": details}
    current = iterations[-1]
    total = current.dirty_bytes if current.iteration else stats.total_bytes
    done = min(total, stats.iteration_processed_bytes)
    left, dirty_rate = human_bytes(total - done), human_bytes(stats.dirty_rate_bytes_per_second)
    details = f"{left} of {human_bytes(total)} left, dirty {dirty_rate}/s, wire {human_bytes(wire_speed)}/s"
    if stats.throttle_percent:
        details += f", throttle {stats.throttle_percent} %"
    label = "final" if current.final else f"iter {current.iteration}"
    return {"description": f"{label} {status.phase}", "total": total or None, "completed": done, "details": details}


@contextlib.contextmanager
def progress(
    enabled: bool, show_iterations: bool = False, console: Console | None = None
) -> Iterator[Callable[[pb.MigrationStatus], None]]:
    """Yields an on_update callback: a bar on stderr (when enabled), and one line per finished iteration."""
    console = console or console_for(stderr=True)
    printed = -1  # the number of the last iteration printed (a status carries only the latest ones)
    forecast_said = False

    def print_iterations(status: pb.MigrationStatus) -> None:
        nonlocal printed, forecast_said
        if not (show_iterations and status.live):
            return
        # While running, the newest iteration may still be in progress.
        finished = list(status.iterations) if status.state != pb.RUNNING else list(status.iterations)[:-1]
        for iteration in finished:
            if iteration.iteration > printed:
                console.print(iteration_line(iteration))
                printed = max(printed, iteration.iteration)
        if status.convergence_forecast and not forecast_said:
            console.print(status.convergence_forecast)
            forecast_said = True

    if not enabled:
        yield print_iterations
        return
    bar = Progress(
        TextColumn("[bold]{task.description}", table_column=Column(min_width=14, no_wrap=True)),
        BarColumn(bar_width=16, table_column=Column(min_width=10)),
        TaskProgressColumn(table_column=Column(min_width=4, no_wrap=True)),
        TextColumn("ETA", table_column=Column(min_width=3, no_wrap=True)),
        TimeRemainingColumn(table_column=Column(min_width=7, no_wrap=True)),
        # Details last: at 80 columns they are what gets cut, never the ETA.
        TextColumn("{task.fields[details]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=console,
        transient=True,
    )
    task = bar.add_task("migrating", total=None, details="")
    wire = WireSpeed()

    def on_update(status: pb.MigrationStatus) -> None:
        fields = bar_fields(status, wire.update(status.stats.wire_bytes))
        bar.update(task, **fields)
        print_iterations(status)

    with bar:
        yield on_update


def compressed_text(status: pb.MigrationStatus) -> str:
    """The compression row: method, raw to compressed bytes of the batches that went out
    compressed, their ratio, and their share of what was transmitted (the rest went raw)."""
    stats = status.stats
    method = pb.Compression.Name(status.compression).removeprefix("COMPRESSION_").lower()
    if not stats.compressed_bytes:
        return f"{method}: none (every batch went raw)"
    share = stats.compressed_raw_bytes / stats.transmitted_bytes if stats.transmitted_bytes else 0.0
    low, high = stats.lowest_compression_level, stats.highest_compression_level
    levels = f"level {low}" if low == high else f"levels {low}-{high}"
    return (
        f"{method}: {human_bytes(stats.compressed_raw_bytes)} to {human_bytes(stats.compressed_bytes)} "
        f"(ratio {stats.compressed_raw_bytes / stats.compressed_bytes:.2f}; {share:.0%} of transmitted; {levels})"
    )


def print_status(status: pb.MigrationStatus, console: Console | None = None) -> None:
    console = console or console_for()
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
            ("zero records sent", human_bytes(stats.zeroed_bytes)),
            ("dirty rate (last 2 s)", f"{human_bytes(stats.dirty_rate_bytes_per_second)}/s"),
            ("bandwidth for estimate", f"{human_bytes(stats.bandwidth_bytes_per_second)}/s ({stats.bandwidth_source})"),
            ("expected downtime", f"{stats.expected_downtime_ms} ms"),
        ]
    if status.live or stats.downtime_ms:
        rows.append(
            ("downtime", f"{stats.downtime_ms} ms" + (f" (verify {stats.verify_ms} ms)" if stats.verify_ms else ""))
        )
    if status.max_bandwidth_bytes_per_second:
        rows.append(("bandwidth cap", f"{human_bytes(status.max_bandwidth_bytes_per_second)}/s"))
    if status.compression:
        rows.append(("compressed", compressed_text(status)))
    if status.convergence_forecast:
        rows.append(("forecast", status.convergence_forecast))
    if status.guest_state:
        run_state = f" (QEMU: {status.guest_run_state})" if status.guest_run_state else ""
        rows.append(("source guest", status.guest_state + run_state))
    if status.error:
        rows.append(("error", status.error))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if status.state in (pb.FAILED, pb.CANCELLED):
        return  # the receiver removed a failed or cancelled migration's destination files
    for region in status.destination_regions:
        length = f"{region.length} ({human_bytes(region.length)})"
        console.print(f"destination region gpa={region.gpa:#x} length={length}: {region.path}")


def print_list(statuses: list[pb.MigrationStatus], console: Console | None = None) -> None:
    """`livemig migrations list`: one row per migration the sender remembers."""
    console = console or console_for()
    table = Table(title=f"{len(statuses)} migrations")
    for header in ("id", "state", "phase", "destination", "processed", "wire", "iterations", "error"):
        table.add_column(
            header,
            justify="right" if header in ("processed", "wire", "iterations") else "left",
            # The id is what an operator copies into `migrations show/cancel`: never cut or folded.
            no_wrap=header == "id",
            min_width=32 if header == "id" else None,
            overflow="fold" if header != "id" else "ignore",
        )
    for status in statuses:
        stats = status.stats
        table.add_row(
            status.migration_id,
            pb.MigrationState.Name(status.state),
            status.phase,
            status.destination,
            f"{human_bytes(stats.processed_bytes)} / {human_bytes(planned_bytes(status))}",
            human_bytes(stats.wire_bytes),
            str(stats.iterations) if status.live else "-",
            status.error,
        )
    console.print(table)


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


def print_check(check: pb.MigrationCheck, console: Console | None = None) -> None:
    """A preflight's outcome: its problems, then what the migration would send and how long it would take."""
    console = console or console_for()
    for problem in check.problems:
        console.print(f"problem: {problem}")
    if check.total_bytes:
        share = check.zero_bytes / check.total_bytes
        console.print(
            f"would send {human_bytes(check.send_bytes)} of {human_bytes(check.total_bytes)} "
            f"({human_bytes(check.zero_bytes)} zero pages, {share:.0%})"
        )
        if check.bandwidth_source:
            console.print(
                f"forecast: {check.forecast_ms / 1000:.1f} s for one pass at "
                f"{human_bytes(check.bandwidth_bytes_per_second)}/s ({check.bandwidth_source})"
            )
        else:
            console.print("forecast: no bandwidth known (nothing is sent to measure one); give --available-bandwidth")
    if check.receiver_data_ports:
        console.print(
            f"receiver: accepts this layout, batches up to {human_bytes(check.receiver_max_batch_bytes)}, "
            f"{check.receiver_data_ports} data ports"
        )
    console.print("ready to migrate" if not check.problems else f"{len(check.problems)} problem(s): not ready")
