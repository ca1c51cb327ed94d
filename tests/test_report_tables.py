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
