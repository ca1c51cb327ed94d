"""Migrations over real links: compression off against adaptive compression, side by side,
and the bandwidth cap held over time.

Usage (root: network namespaces): .venv/bin/python benchmarks/links.py [--size 1G] [--repeat 3]
           [--rate 1gbit] [--method zstd] [--cap-seconds 30] [--markdown]

1. Over a link: two network namespaces joined by a veth pair capped with `tc` (tests/netns.py),
   the receiver in one, the sender in the other; `send-migration --json` runs in the sender's
   namespace. Images: a booted guest (cli/qemu_guest.py) whose page cache holds file contents
   (the busybox program and text), paused and copied; and a synthetic image, 100 % random.
2. On loopback, the random image: time and CPU per GiB of both services' process trees.
3. The cap: a loopback migration capped at 100 MiB/s sized to take about --cap-seconds;
   the wire bytes are sampled every second (GetMigration) and compared with the cap.

Zero pages are skipped in every case; compression is the only difference. Medians of
--repeat, interleaved. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from real_guests import capture
from rich.console import Console

from livemig.cli import qemu_guest
from livemig.cli.bench import cpu_per_gib
from livemig.cli.client import run_migration
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess, tree_cpu_seconds
from livemig.cli.report import human_bytes, print_table
from livemig.cli.units import size_in_mib_by_default
from livemig.common.proto import livemig_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import netns

MIB = 1 << 20
METHODS = {"zstd": pb.COMPRESSION_ZSTD, "lz4": pb.COMPRESSION_LZ4}


def over_link(hosts: netns.TwoHosts, image: Path, compress: str) -> dict:
    command = hosts.send_migration(image, "--skip-zero-pages", "--connections", "2", "--compress", compress)
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    return json.loads(result.stdout)


def on_loopback(
    tx: ServiceProcess, rx: ServiceProcess, image: Path, compression: int
) -> tuple[pb.MigrationStatus, float]:
    before = tree_cpu_seconds(tx.pid) + tree_cpu_seconds(rx.pid)
    status = run_migration(
        tx.address,
        pb.StartMigrationRequest(
            destination=rx.address,
            regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
            connections=2,
            skip_zero_pages=True,
            compression=compression,
        ),
    )
    for region in status.destination_regions:
        shutil.rmtree(Path(region.path).parent, ignore_errors=True)
    return status, tree_cpu_seconds(tx.pid) + tree_cpu_seconds(rx.pid) - before


def capped(tx: ServiceProcess, rx: ServiceProcess, image: Path, cap: float) -> tuple[float, float, list[float]]:
    """(average wire rate, the highest second, every second's rate) of a capped migration."""
    import grpc

    from livemig.common.proto import livemig_pb2_grpc as pb_grpc

    with grpc.insecure_channel(tx.address) as channel:
        stub = pb_grpc.SenderStub(channel)
        migration_id = stub.StartMigration(
            pb.StartMigrationRequest(
                destination=rx.address,
                regions=[pb.GuestMemoryRegion(gpa=0, path=str(image))],
                connections=2,
                max_bandwidth_bytes_per_second=cap,
            )
        ).migration_id
        samples: list[tuple[float, int]] = []
        while True:
            status = stub.GetMigration(pb.MigrationRequest(migration_id=migration_id))
            samples.append((time.monotonic(), status.stats.wire_bytes))
            if status.state in (pb.COMPLETED, pb.FAILED, pb.CANCELLED):
                break
            time.sleep(1.0)
    for region in status.destination_regions:
        shutil.rmtree(Path(region.path).parent, ignore_errors=True)
    if status.state != pb.COMPLETED:
        raise RuntimeError(status.error)
    rates = [(b1 - b0) / (t1 - t0) for (t0, b0), (t1, b1) in itertools.pairwise(samples)][:-1]
    average = status.stats.wire_bytes / (status.stats.transfer_ms / 1000)
    return average, max(rates, default=0.0), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=size_in_mib_by_default, default="1G", help="images and guest, K/M/G (bare: MiB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", default="1gbit", help="the link's tc rate")
    parser.add_argument("--method", default="zstd", choices=sorted(METHODS))
    parser.add_argument("--cap-seconds", type=int, default=30)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    console = Console(width=200)
    size = args.size
    why = netns.unavailable()
    missing = qemu_guest.missing_tools()
    if why or missing:
        console.print(f"skipped: {why or ', '.join(missing)}")
        return
    work = Path(tempfile.mkdtemp(prefix="livemig-links-", dir=tmpfs_dir()))
    rows, loopback_rows = [], []
    try:
        options = qemu_guest.GuestOptions(fill_mib=(size >> 20) // 2, fill_with_files=True)
        images = {
            "booted guest, page cache of files": capture(
                qemu_guest.prepare_guest(), options, size >> 20, work, "guest"
            ),
            "random 100 %": work / "random.img",
        }
        make_image(images["random 100 %"], size, 1.0, seed=11)
        hosts = netns.TwoHosts(rate=args.rate)
        processes = []
        try:
            processes += hosts.start_services(work / "dst")
            for label, image in images.items():
                runs: dict[str, list[dict]] = {"none": [], args.method: []}
                for repeat in range(args.repeat):
                    for compress in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
                        runs[compress].append(over_link(hosts, image, compress))
                off = median(int(r["stats"]["duration_ms"]) for r in runs["none"])
                on = median(int(r["stats"]["duration_ms"]) for r in runs[args.method])
                last = runs[args.method][-1]["stats"]
                packed = int(last.get("compressed_bytes", 0))
                ratio = f"{int(last.get('compressed_raw_bytes', 0)) / packed:.2f}" if packed else "(all raw)"
                levels = f"{last.get('lowest_compression_level', 0)}-{last.get('highest_compression_level', 0)}"
                ok = all(r["state"] == "COMPLETED" for rs in runs.values() for r in rs)
                rows.append(
                    [
                        args.rate,
                        label,
                        f"{off}",
                        f"{on}",
                        f"{on / off:.2f}",
                        ratio,
                        levels if packed else "-",
                        "yes" if ok else "NO",
                    ]
                )
        finally:
            for process in processes:
                process.kill()
            hosts.close()
        with (
            ServiceProcess("receiver", ["--memory-dir", str(work / "loopback")]) as rx,
            ServiceProcess("sender", []) as tx,
        ):
            image = images["random 100 %"]
            runs2: dict[int, list[tuple[pb.MigrationStatus, float]]] = {
                pb.COMPRESSION_NONE: [],
                METHODS[args.method]: [],
            }
            on_loopback(tx, rx, image, pb.COMPRESSION_NONE)  # warm-up
            for repeat in range(args.repeat):
                for method in list(runs2) if repeat % 2 == 0 else list(runs2)[::-1]:
                    runs2[method].append(on_loopback(tx, rx, image, method))
            off_ms = median(s.stats.duration_ms for s, _ in runs2[pb.COMPRESSION_NONE])
            on_ms = median(s.stats.duration_ms for s, _ in runs2[METHODS[args.method]])
            off_cpu = median(c for _, c in runs2[pb.COMPRESSION_NONE])
            on_cpu = median(c for _, c in runs2[METHODS[args.method]])
            loopback_rows.append(
                ["loopback", "random 100 %", f"{off_ms}", f"{on_ms}", f"{on_ms / off_ms:.2f}",
                 f"{cpu_per_gib(off_cpu, size):.2f}", f"{cpu_per_gib(on_cpu, size):.2f}"]
            )  # fmt: skip
            cap = 100 * MIB
            cap_image = work / "cap.img"
            make_image(cap_image, int(cap * args.cap_seconds) // MIB * MIB, 1.0, seed=12)
            average, highest, rates = capped(tx, rx, cap_image, cap)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(
        console,
        f"Compression over a link (medians of {args.repeat}, interleaved; ms)",
        ["link", "image", "off ms", f"{args.method} ms", f"{args.method} / off", "ratio", "levels (last run)", "ok"],
        rows,
        args.markdown,
    )
    print_table(
        console,
        "Compression on loopback, 2 cores",
        [
            "link",
            "image",
            "off ms",
            f"{args.method} ms",
            f"{args.method} / off",
            "CPU s/GiB off",
            f"CPU s/GiB {args.method}",
        ],
        loopback_rows,
        args.markdown,
    )
    console.print(
        f"cap {human_bytes(cap)}/s over {len(rates) + 1} s: average {human_bytes(average)}/s "
        f"({average / cap:.3f} of the cap), highest second {human_bytes(highest)}/s ({highest / cap:.2f} of the cap); "
        f"seconds: {' '.join(f'{r / cap:.2f}' for r in rates)}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    sys.exit(main())
