"""Real guest memory as benchmark data: images taken from booted guests, beside the
synthetic ones of `livemig bench`.

Usage: .venv/bin/python benchmarks/real_guests.py [--size 1G] [--connections 2] [--repeat 3] [--markdown]

Three guests (cli/qemu_guest.py: Debian's cloud kernel, busybox initramfs, TCG) are
booted with their RAM in a shared file on tmpfs, paused over QMP once settled, and
their RAM files copied as they are (holes stay holes: `cp --sparse=auto` follows
SEEK_DATA/SEEK_HOLE, so pages the guest never touched stay unallocated, as on the
source host, and zeros the guest wrote stay written):
- idle: idle after boot;
- pagecache: half its memory filled with page cache (a file in its rootfs);
- memdirty: a process holding half its memory and dirtying 64 MiB/s of it.

Then, on each image, between the same two livemig services:
1. the seed's table (Cloud Hypervisor's "skip zero pages" PR): the zero share, and
   livemig's time without and with zero-page skipping, side by side;
2. QEMU's own migration of the same image (multifd, N channels, max-bandwidth lifted:
   benchmarks/qemu_compare.py's qemu_migrate) against livemig with skipping.

Every case interleaved, medians of --repeat; figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from qemu_compare import qemu_migrate
from rich.console import Console
from vm_downtime import zero_share

from livemig.cli import qemu_guest
from livemig.cli.bench import cpu_per_gib, measure_case, receiver_args
from livemig.cli.images import tmpfs_dir
from livemig.cli.processes import ServiceProcess
from livemig.cli.report import human_bytes, print_table
from livemig.cli.units import size_in_mib_by_default
from livemig.common.qmp import qmp_connection
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

SETTLE_SECONDS = 3.0


def guests(size_mib: int) -> dict[str, qemu_guest.GuestOptions]:
    return {
        "idle": qemu_guest.GuestOptions(),
        "pagecache": qemu_guest.GuestOptions(fill_mib=size_mib // 2),
        "memdirty": qemu_guest.GuestOptions(hold_mib=size_mib // 2, dirty_mib_per_second=64),
    }


def capture(
    image: qemu_guest.GuestImage, options: qemu_guest.GuestOptions, size_mib: int, work: Path, name: str
) -> Path:
    """Boot, let the guest settle, pause it and copy its RAM file (holes kept)."""
    ram, qmp, console = work / f"{name}.ram", str(work / f"{name}.qmp"), work / f"{name}.console"
    argv = qemu_guest.qemu_argv(image, ram, size_mib, qmp, console, options)
    with qemu_guest.QemuVm(argv, qmp, console) as guest:
        guest.wait_for(qemu_guest.READY, 900)
        time.sleep(SETTLE_SECONDS)
        with qmp_connection(qmp) as connection:
            connection.execute("stop")
        snapshot = work / f"{name}.img"
        subprocess.run(["cp", "--sparse=auto", str(ram), str(snapshot)], check=True)
    ram.unlink()
    return snapshot


def allocated_share(path: Path) -> float:
    status = path.stat()
    return status.st_blocks * 512 / status.st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=size_in_mib_by_default, default="1G", help="guest RAM, K/M/G (bare: MiB); default 1G"
    )
    parser.add_argument("--guests", default="idle,pagecache,memdirty")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    console = Console(width=220)
    missing = qemu_guest.missing_tools()
    if missing:
        console.print(f"skipped: needs {', '.join(missing)}")
        return
    size = args.size
    size_mib = size >> 20
    image = qemu_guest.prepare_guest()
    binary = shutil.which(qemu_guest.QEMU)
    assert binary is not None
    batch = DEFAULT_MAX_BATCH_BYTES
    seed_rows, qemu_rows, notes = [], [], []
    work = Path(tempfile.mkdtemp(prefix="livemig-real-guests-", dir=tmpfs_dir()))
    try:
        snapshots = {name: capture(image, options, size_mib, work, name) for name, options in guests(size_mib).items()}
        snapshots = {name: path for name, path in snapshots.items() if name in args.guests.split(",")}
        destination = work / "destination"
        destination.mkdir()
        with (
            ServiceProcess("receiver", receiver_args(destination, batch, None)) as rx,
            ServiceProcess("sender", []) as tx,
        ):
            for name, snapshot in snapshots.items():
                zeros, allocated = zero_share(snapshot), allocated_share(snapshot)
                qemu_source = work / "qemu-source.mem"
                subprocess.run(["cp", "--sparse=auto", str(snapshot), str(qemu_source)], check=True)
                measure_case(tx, rx, snapshot, 1 - zeros, args.connections, True, batch)  # warm-up
                runs: dict[str, list] = {"no skip": [], "skip": [], "qemu": []}
                for repeat in range(args.repeat):
                    sides = ["no skip", "skip", "qemu"]
                    for side in sides if repeat % 2 == 0 else sides[::-1]:
                        if side == "qemu":
                            check = snapshot if repeat == 0 else None
                            runs[side].append(qemu_migrate(binary, qemu_source, size, args.connections, work, check))
                        else:
                            runs[side].append(
                                measure_case(tx, rx, snapshot, 1 - zeros, args.connections, side == "skip", batch)
                            )
                qemu_source.unlink()
                no_skip = median(c.duration_ms for c in runs["no skip"])
                skip = median(c.duration_ms for c in runs["skip"])
                q_ms = median(r.ms for r in runs["qemu"])
                ok = all(c.ok for c in runs["no skip"] + runs["skip"]) and all(r.ok for r in runs["qemu"])
                sent = median(c.transmitted for c in runs["skip"])
                seed_rows.append(
                    [
                        f"{name}, {human_bytes(size)}",
                        f"{zeros:.1%}",
                        f"{allocated:.0%}",
                        f"{no_skip:.0f}",
                        f"{skip:.0f}",
                        f"{skip / no_skip:.2f}",
                        human_bytes(sent),
                        "yes" if ok else "NO",
                    ]
                )
                l_cpu = median(c.sender_cpu + c.receiver_cpu for c in runs["skip"])
                q_cpu = median(r.cpu_source + r.cpu_destination for r in runs["qemu"])
                qemu_rows.append(
                    [
                        f"{name}, {human_bytes(size)}, {args.connections}",
                        f"{q_ms:.0f}",
                        f"{skip:.0f}",
                        f"{skip / q_ms:.2f}",
                        f"{cpu_per_gib(q_cpu, size):.2f}",
                        f"{cpu_per_gib(l_cpu, size):.2f}",
                        f"{l_cpu / q_cpu:.2f}" if q_cpu else "-",
                    ]
                )
                notes.append(f"{name}: QEMU first run: {runs['qemu'][0].note}")
                snapshot.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(
        console,
        f"Real guests: zero pages and skipping (livemig, {args.connections} connections, medians of {args.repeat})",
        ["guest", "zero pages", "allocated", "no skip ms", "skip ms", "skip / no skip", "sent (skip)", "ok"],
        seed_rows,
        args.markdown,
    )
    print_table(
        console,
        f"Real guests: QEMU multifd against livemig (skip), medians of {args.repeat}, interleaved",
        [
            "guest, channels",
            "QEMU ms",
            "livemig ms",
            "livemig / QEMU",
            "QEMU CPU s/GiB",
            "livemig CPU s/GiB",
            "CPU ratio",
        ],
        qemu_rows,
        args.markdown,
    )
    for line in notes:
        console.print(line, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
