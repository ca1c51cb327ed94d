"""What the CLI's tables show a person: whole ids, no paths of removed files."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from livemig.cli import report
from livemig.common.proto import livemig_pb2 as pb

ID = "0123456789abcdef0123456789abcdef"


def rendered(print_function, status: pb.MigrationStatus, width: int) -> str:
    buffer = io.StringIO()
    print_function(status, Console(file=buffer, width=width))
    return buffer.getvalue()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_migrations_list_never_cuts_the_id(width):
    status = pb.MigrationStatus(
        migration_id=ID, state=pb.FAILED, phase="done", destination="dst-host:7868", error="x " * 80
    )
    assert ID in rendered(lambda s, c: report.print_list([s], c), status, width)


@pytest.mark.parametrize(("state", "shown"), [(pb.COMPLETED, True), (pb.FAILED, False), (pb.CANCELLED, False)])
def test_destination_paths_only_for_memory_that_is_still_there(state, shown):
    status = pb.MigrationStatus(
        migration_id=ID,
        state=state,
        destination_regions=[pb.DestinationRegion(gpa=0, length=4096, path="/dev/shm/livemig/x/region-0.mem")],
    )
    assert ("region-0.mem" in rendered(report.print_status, status, 200)) is shown


MIB = 1 << 20


def live_status(processed: int) -> pb.MigrationStatus:
    """Iteration 0 sent 64 MiB; iteration 2 of 6 MiB dirty is under way."""
    return pb.MigrationStatus(
        state=pb.RUNNING,
        phase="precopy",
        live=True,
        stats=pb.MigrationStats(
            total_bytes=64 * MIB,
            processed_bytes=processed,
            iteration_processed_bytes=processed - (64 + 8) * MIB,
            dirty_rate_bytes_per_second=3 * MIB,
        ),
        iterations=[
            pb.IterationStats(iteration=0, dirty_bytes=64 * MIB),
            pb.IterationStats(iteration=1, dirty_bytes=8 * MIB),
            pb.IterationStats(iteration=2, dirty_bytes=6 * MIB),
        ],
    )


def test_the_live_bar_shows_the_current_iteration_not_a_finished_total():
    fields = report.bar_fields(live_status(processed=(64 + 8 + 2) * MIB), wire_speed=MIB)
    assert fields["description"] == "iter 2 precopy"
    assert (fields["completed"], fields["total"]) == (2 * MIB, 6 * MIB)  # 33 %, not 100 %
    assert "4.0 MiB of 6.0 MiB left" in fields["details"] and "dirty 3.0 MiB/s" in fields["details"]


def test_a_one_pass_bar_counts_all_memory():
    status = pb.MigrationStatus(state=pb.RUNNING, stats=pb.MigrationStats(total_bytes=64 * MIB, processed_bytes=MIB))
    fields = report.bar_fields(status, wire_speed=0)
    assert (fields["completed"], fields["total"]) == (MIB, 64 * MIB)


def test_the_bar_keeps_its_eta_at_80_columns():
    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=True, color_system=None)
    with report.progress(enabled=True, console=console) as on_update:
        on_update(live_status(processed=(64 + 8 + 2) * MIB))
    line = next(text for text in buffer.getvalue().splitlines() if "iter 2" in text).replace("\x1b[2K", "")
    assert "ETA" in line and len(line) <= 80
    eta = line.split("ETA", 1)[1].split()[0]
    assert eta == "-:--:--" or eta.count(":") == 2  # the remaining time itself, not cut to "…"


def test_the_zeroed_figure_says_what_it_counts():
    """The CLI shows the zero records the sender sent; the receiver's metric what it cleared."""
    from livemig.receiver import metrics

    line = report.iteration_line(pb.IterationStats(iteration=1, zeroed_bytes=8192))
    assert "8.0 KiB in zero records" in line
    status = pb.MigrationStatus(live=True, stats=pb.MigrationStats(zeroed_bytes=8192))
    assert "zero records sent" in rendered(report.print_status, status, 200)
    assert "only pages it had written" in metrics.ZEROED_BYTES._documentation
