"""Downtime of a real VM: `livemig migrate-vm` against QEMU's own migration of the same
paused guest, interleaved on the same running guest.

Usage: .venv/bin/python benchmarks/vm_downtime.py [--size 2G] [--guests idle,pagecache]
           [--repeat 3] [--connections 2] [--markdown]

The guest is the tests' and the demo's (cli/qemu_guest.py: Debian's cloud kernel, a
busybox initramfs, TCG), booted once per kind with its RAM in a shared file:
- idle: idle after boot;
- pagecache: half its memory filled with page cache (a file in its rootfs).

Each run boots a fresh guest, pauses it, migrates it, and ends when the destination
runs; the guest itself proves each destination (a tick on its console with the md5
of its boot-time blob), then both QEMUs are stopped.

- QEMU: multifd with N channels, max-bandwidth lifted, no x-ignore-shared (QEMU moves
  all RAM), into a destination QEMU started beforehand with `-incoming defer`.
  Downtime: `stop` on the source until `cont` on the destination returned running
  (the guest was paused all along; QEMU's own "downtime" figure covers only its
  last stage).
- livemig: `migrate-vm` (cli/migrate_vm.py), N connections, zero pages skipped,
  once without and once with --verify (the digest of all memory on both ends).
  Downtime: as the command reports it (the sender's pause until the destination runs).

Figures, never pass/fail. Medians of --repeat.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import median

from rich.console import Console

from livemig.cli import qemu_guest
from livemig.cli.images import tmpfs_dir
from livemig.cli.migrate_vm import VmMigrationPlan, free_port, migrate_vm
from livemig.cli.processes import ServiceProcess
from livemig.cli.report import print_table
from livemig.cli.units import size_in_mib_by_default
from livemig.common.qmp import qmp_connection

SETTLE_SECONDS = 2.0  # past boot: the guest settles into its loop

GUESTS = {
    "idle": lambda size_mib: qemu_guest.GuestOptions(),
    "pagecache": lambda size_mib: qemu_guest.GuestOptions(fill_mib=size_mib // 2),
}


@dataclass
class Sample:
    side: str
    downtime_ms: float
    detail: str


def zero_share(memory: Path) -> float:
    """Share of the RAM file's 4 KiB pages that are all zero (holes included)."""
    import numpy as np

    pages = zero = 0
    with memory.open("rb") as file:
        while block := file.read(64 << 20):
            view = np.frombuffer(block, dtype=np.uint64).reshape(-1, 512)
            zero += int(np.count_nonzero(~view.any(axis=1)))
            pages += view.shape[0]
    return zero / pages if pages else 0.0


def check_destination(console: Path, checksum: str, timeout: float = 60.0) -> None:
    """The guest proves the destination: a tick with its boot-time md5, no reboot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        ticks = qemu_guest.TICK.findall(text)
        if ticks:
            if any(md5 != checksum for _n, md5 in ticks) or qemu_guest.READY.search(text):
                raise RuntimeError(f"the destination guest's memory differs: {text[-300:]}")
            return
        time.sleep(0.05)
    raise RuntimeError("the destination guest printed no tick")


def qemu_run(
    image: qemu_guest.GuestImage, options, size_mib: int, work: Path, source_qmp: str, checksum: str, channels: int
) -> Sample:
    """QEMU's own migration of the running guest, paused first (`stop`)."""
    memory = work / "qemu-destination.ram"
    memory.unlink(missing_ok=True)
    console = work / "qemu-destination.console"
    console.unlink(missing_ok=True)
    qmp = str(work / "qemu-destination.qmp")
    argv = qemu_guest.qemu_argv(image, memory, size_mib, qmp, console, options, incoming=True)
    port = free_port("127.0.0.1")
    uri = f"tcp:127.0.0.1:{port}"
    with qemu_guest.QemuVm(argv, qmp, console) as destination:
        with qmp_connection(qmp) as dst, qmp_connection(source_qmp) as src:
            for side in (dst, src):
                side.set_capabilities(multifd=True)
                side.execute("migrate-set-parameters", **{"multifd-channels": channels, "max-bandwidth": 1 << 40})
            dst.execute("migrate-incoming", uri=uri)
            stopped = time.monotonic()
            src.execute("stop")
            info = src.migrate_and_wait(uri)
            while dst.run_state() == "inmigrate":
                time.sleep(0.002)
            dst.execute("cont")
            running = time.monotonic()
        check_destination(console, checksum)
        destination.close()
    memory.unlink(missing_ok=True)
    ram = info.get("ram", {})
    detail = (
        f"QEMU: transferred {ram.get('transferred', 0) >> 20} MiB, normal {ram.get('normal', 0)}, "
        f"duplicate {ram.get('duplicate', 0)} pages, total-time {info.get('total-time')} ms"
    )
    return Sample("QEMU multifd", (running - stopped) * 1000, detail)


def livemig_run(
    image: qemu_guest.GuestImage,
    options,
    size_mib: int,
    work: Path,
    tx: ServiceProcess,
    rx: ServiceProcess,
    qmp_dir: Path,
    connections: int,
    verify: bool,
    checksum: str,
) -> Sample:
    console = work / "livemig-destination.console"
    console.unlink(missing_ok=True)
    template = shlex.join(
        qemu_guest.qemu_argv(image, Path("{mem[mem]}"), size_mib, "{qmp}", console, options, incoming=True)
    )
    plan = VmMigrationPlan(
        sender=tx.address,
        destination=rx.address,
        qmp_dir=qmp_dir,
        guest="vm",
        destination_command=template,
        connections=connections,
        verify=verify,
        keep_source=True,
    )
    report = migrate_vm(plan)
    if not report.ok:
        raise RuntimeError(f"migrate-vm failed: {report.error}")
    try:
        check_destination(console, checksum)
    finally:
        with qmp_connection(report.destination_qmp) as qmp:
            qmp.execute("quit")
        assert report.status is not None
        for region in report.status.destination_regions:
            shutil.rmtree(Path(region.path).parent, ignore_errors=True)
        shutil.rmtree(Path(report.destination_qmp).parent, ignore_errors=True)
    stats = report.status.stats
    detail = (
        f"livemig{' --verify' if verify else ''}: memory {report.memory_ms:.0f} ms (verify {stats.verify_ms} ms), "
        f"destination waited {report.destination_wait_ms:.0f} ms, device state {report.device_state_ms:.0f} ms; "
        f"sent {stats.transmitted_bytes >> 20} MiB, skipped {stats.zero_bytes >> 20} MiB"
    )
    return Sample(f"livemig{' --verify' if verify else ''}", report.downtime_ms, detail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=size_in_mib_by_default, default="2G", help="guest RAM, K/M/G (bare: MiB); default 2G"
    )
    parser.add_argument("--guests", default="idle,pagecache")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", type=int, default=2, help="livemig connections = QEMU multifd channels")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    console = Console(width=220)
    missing = qemu_guest.missing_tools()
    if missing:
        console.print(f"skipped: needs {', '.join(missing)}")
        return
    size_mib = args.size >> 20
    image = qemu_guest.prepare_guest()
    rows: list[list[str]] = []
    details: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="livemig-vm-bench-", dir=tmpfs_dir()))
    try:
        qmp_dir = work / "qmp"
        qmp_dir.mkdir()
        with (
            ServiceProcess("receiver", ["--memory-dir", str(work / "destination")]) as rx,
            ServiceProcess("sender", ["--qmp-dir", str(qmp_dir)]) as tx,
        ):
            for kind in args.guests.split(","):
                options = GUESTS[kind](size_mib)
                source_qmp = str(qmp_dir / "vm")
                ram = work / "source.ram"
                argv = qemu_guest.qemu_argv(image, ram, size_mib, source_qmp, work / "source.console", options)
                ours = partial(livemig_run, image, options, size_mib, work, tx, rx, qmp_dir)
                sides = {
                    "QEMU multifd": partial(qemu_run, image, options, size_mib, work, source_qmp),
                    "livemig": partial(ours, args.connections, False),
                    "livemig --verify": partial(ours, args.connections, True),
                }
                samples: dict[str, list[Sample]] = {}
                zeros = -1.0
                for repeat in range(args.repeat):
                    for side in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:
                        # A fresh guest for every run: QEMU's migration reads every page of
                        # the shared file through its mapping, which allocates the holes,
                        # and a later run would then start from another guest.
                        ram.unlink(missing_ok=True)
                        with qemu_guest.QemuVm(argv, source_qmp, work / "source.console") as source:
                            checksum = source.wait_for(qemu_guest.READY, 900).group(1)
                            time.sleep(SETTLE_SECONDS)
                            if zeros < 0:
                                with qmp_connection(source_qmp) as qmp:
                                    qmp.execute("stop")
                                    zeros = zero_share(ram)
                                    qmp.execute("cont")
                            if side == "QEMU multifd":
                                sample = sides[side](checksum, args.connections)
                            else:
                                sample = sides[side](checksum)
                            samples.setdefault(sample.side, []).append(sample)
                        ram.unlink(missing_ok=True)
                qemu_ms = median(s.downtime_ms for s in samples["QEMU multifd"])
                for side, runs_of_side in samples.items():
                    downtime = median(s.downtime_ms for s in runs_of_side)
                    rows.append(
                        [
                            f"{kind}, {size_mib} MiB, {zeros:.0%} zero pages",
                            side,
                            f"{downtime:.0f}",
                            " / ".join(f"{s.downtime_ms:.0f}" for s in runs_of_side),
                            f"{downtime / qemu_ms:.2f}",
                        ]
                    )
                    details.append(f"{kind}, {runs_of_side[0].detail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    title = f"VM downtime (guest stopped -> destination running), medians of {args.repeat}, interleaved"
    headers = ["guest", "migration", "downtime ms", "runs ms", "/ QEMU"]
    print_table(console, title, headers, rows, args.markdown)
    for line in details:
        console.print(line, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
