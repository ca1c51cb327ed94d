"""A receiver and a sender on loopback, one guest image, and a migrate() to call.

The profiling tools (perf_split.py, profile_migration.py) measure the services
while the same migration runs again and again; this is the set-up they share.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from livemig.cli.client import run_migration
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess
from livemig.common.proto import livemig_pb2 as pb


@dataclass(frozen=True)
class Loopback:
    sender: ServiceProcess
    receiver: ServiceProcess
    workdir: Path  # a tmpfs folder, removed at the end
    migrate: Callable[[], int]  # one migration of the image; its duration in ms


@contextlib.contextmanager
def loopback(
    prefix: str, size: int, touched: float, receiver_args: Sequence[str] = (), **request_fields
) -> Iterator[Loopback]:
    """Both services, an image of `size` bytes with `touched` of its pages written, and
    one warm-up migration done (pools started, image in the page cache). Each
    migration must complete; its destination is removed after it."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=tmpfs_dir()))
    try:
        image = workdir / "guest.img"
        make_image(image, size, touched, seed=7)
        receiver = ["--memory-dir", str(workdir / "dst"), *receiver_args]
        with ServiceProcess("receiver", receiver) as rx, ServiceProcess("sender", []) as tx:
            request = pb.StartMigrationRequest(
                destination=rx.address, regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))], **request_fields
            )

            def migrate() -> int:
                status = run_migration(tx.address, request)
                assert status.state == pb.COMPLETED, status.error
                for region in status.destination_regions:
                    shutil.rmtree(Path(region.path).parent, ignore_errors=True)
                return status.stats.duration_ms

            migrate()
            yield Loopback(tx, rx, workdir, migrate)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
