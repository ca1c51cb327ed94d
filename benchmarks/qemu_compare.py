"""QEMU's own migration (multifd) against livemig, on the same guest image, interleaved.

Usage: .venv/bin/python benchmarks/qemu_compare.py [--size 1G] [--touched 1,0.5] [--connections 2]
           [--repeat 3] [--markdown] [--sides qemu,livemig,bare,floor] [--warm 8G] [--warm-each SIZE]

Before the first run it states what tmpfs holds and MemAvailable (old files on
/dev/shm slowed every side that allocates pages here by a third) and writes
--warm bytes to tmpfs and removes them. Right before every measured migration,
of every side, it does the same with --warm-each bytes (the guest size and 1 GiB
more by default), so that each starts with as much recently touched free memory
as it allocates. On this VM a page its host has taken back costs up to 3-4 s per
GiB to touch again, and free pages are taken back within seconds; which side met
them depended on the order. With a warm-up only before the first run, livemig ran
right after QEMU in every other round and the floor never did, and a run right
after QEMU's took 39 % longer for livemig and 12 % for the floor (2 GiB, 100 %
touched, 2 connections, 6 rounds each way; docs/benchmarks.md, stop 19).

QEMU side: two `-S` guests (never started, so no guest OS is needed) whose RAM
is a file on /dev/shm (`memory-backend-file`, share=on); the source's file is the
very image livemig migrates. One file for both: on this VM two copies of the same
bytes written one after the other read up to 10 % apart (the one written first
slower; docs/benchmarks.md, stops 20 and 21), and this tool used to write
livemig's copy first. An -S guest never runs, so QEMU only reads it; a digest of
the image and its allocated blocks before and after each case check that (an image
with holes would have them filled by QEMU's reads: these images have none). The
destination waits with `-incoming defer`; over QMP both get the
multifd capability and N channels, the destination `migrate-incoming`, the
source `migrate`, and `query-migrate` is polled until completed. A fresh pair
runs each migration. Time: `migrate` to completed as seen by polling; CPU: both
QEMU processes over the same span. Each run is checked: query-migrate's RAM
counters must cover every page (normal + duplicate), and the first run of each
case compares the destination's memory file with the image byte for byte.

livemig side: a sender and a receiver (cli/processes.ServiceProcess) started
once, the same image, the same number of connections, zero-page skipping on
(QEMU always detects zero pages: its "duplicate" pages). The services keep the
buffers they freed for the whole run (--keep-buffers 3600, their
--keep-buffers-seconds), as between back-to-back migrations. Interleaved with the
other sides, livemig's runs can come more than the services' default of 10 s
apart, and a migration after such a pause faults about 230 MiB of buffers in
again: +8 % CPU at 2 GiB, 50 % touched, 2 connections, and in six runs of this
tool with the default, livemig's 50 % runs after the longest pauses took 1250
against 1216 ms (medians; docs/benchmarks.md, stop 21). QEMU's processes start
afresh for every run, but neither their start nor their set-up is timed. Give
--keep-buffers 10 to measure the services as they come. CPU is each service's
whole process tree. Medians of --repeat. Figures, never pass/fail.

Bare gRPC side (the floor under any gRPC data plane): N process pairs
(cli/ceiling.py) stream the image's payload (its touched bytes) in messages of
the batch size, from one buffer already in memory, and count it; nothing is
read, scanned or written. Its time against QEMU's, in the same interleaved
run, says how much of the way to QEMU gRPC alone already takes.

Floor side (issue 25): the same process pairs doing the I/O any data plane must
do, nothing else: each client preads its messages from the image, each server
pwrites them into a fresh tmpfs file (cli/ceiling.Floor). livemig's distance to
this row, per end, is what the product itself costs.

Skips with a message (exit 0) where qemu-system-x86_64 is missing; without
/dev/kvm it uses TCG (nothing executes in an -S guest, so the accelerator does
not change what migration does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import xxhash
from rich.console import Console

from livemig.cli.bench import GIB, cpu_per_gib, measure_case, memory_state_line, receiver_args, warm_free_memory
from livemig.cli.ceiling import Ceiling, Floor
from livemig.cli.images import files_equal, make_image, tmpfs_dir
from livemig.cli.migrate_vm import free_port
from livemig.cli.processes import ServiceProcess, tree_cpu_seconds
from livemig.cli.report import human_bytes, print_table
from livemig.cli.units import size_in_mib_by_default
from livemig.common.qmp import QmpConnection, QmpFailure, wait_for_qmp
from livemig.common.stream_activity import MAX_QUIET_SECONDS, MIN_QUIET_SECONDS
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

QEMU = "qemu-system-x86_64"
PAGE = 4096
SEED = 7
POLL_SECONDS = 0.005
MIGRATION_TIMEOUT_SECONDS = 600.0
SIDES = ("qemu", "livemig", "bare", "floor")


def accelerator() -> str:
    return "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"


class QemuGuest:
    """A paused (-S) QEMU whose RAM is the file `memory`, with a QMP socket."""

    def __init__(self, binary: str, memory: Path, size: int, folder: Path, name: str, incoming: bool) -> None:
        self.qmp_path = folder / f"{name}.qmp"
        command = [
            binary,
            "-accel",
            accelerator(),
            "-object",
            f"memory-backend-file,id=mem,size={size},mem-path={memory},share=on",
            "-machine",
            "pc,memory-backend=mem",
            "-m",
            f"{size >> 20}M",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-S",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        if incoming:
            command += ["-incoming", "defer"]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for_qmp(str(self.qmp_path), 30, alive=lambda: self.process.poll() is None)
            self.qmp = QmpConnection(str(self.qmp_path), 30)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def multifd(self, channels: int) -> None:
        self.qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
        # QEMU caps migration at max-bandwidth, 128 MiB/s by default (2 GiB: ~16 s); the
        # comparison is of the data planes, so the cap goes (1 TiB/s) on both ends.
        self.qmp.execute("migrate-set-parameters", **{"multifd-channels": channels, "max-bandwidth": 1 << 40})

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        output = self.process.stdout.read().decode(errors="replace") if self.process.stdout else ""
        if self.process.stdout:
            self.process.stdout.close()
        self.output = output


@dataclass
class Run:
    ms: float
    cpu_source: float
    cpu_destination: float
    ok: bool
    note: str = ""


def qemu_migrate(binary: str, source_memory: Path, size: int, channels: int, folder: Path, check: Path | None) -> Run:
    """One QEMU migration of `source_memory` into a fresh destination file."""
    destination_memory = folder / "qemu-destination.mem"
    destination_memory.unlink(missing_ok=True)
    source = QemuGuest(binary, source_memory, size, folder, "source", incoming=False)
    destination = None
    try:
        destination = QemuGuest(binary, destination_memory, size, folder, "destination", incoming=True)
        port = free_port("127.0.0.1")
        for guest in (source, destination):
            guest.multifd(channels)
        destination.qmp.execute("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
        cpu_before = tree_cpu_seconds(source.pid), tree_cpu_seconds(destination.pid)
        started = time.perf_counter()
        source.qmp.execute("migrate", uri=f"tcp:127.0.0.1:{port}")
        while True:
            info = source.qmp.execute("query-migrate")
            status = info.get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            if time.perf_counter() - started > MIGRATION_TIMEOUT_SECONDS:
                raise QmpFailure("QEMU migration did not complete")
            time.sleep(POLL_SECONDS)
        elapsed = time.perf_counter() - started
        # The destination finishes loading just after the source says completed; wait for it.
        while destination.qmp.execute("query-status").get("status") == "inmigrate":
            time.sleep(POLL_SECONDS)
        cpu = tree_cpu_seconds(source.pid) - cpu_before[0], tree_cpu_seconds(destination.pid) - cpu_before[1]
        ram = info.get("ram", {})
        pages = ram.get("normal", 0) + ram.get("duplicate", 0)
        ok = status == "completed" and pages >= size // PAGE
        note = (
            f"normal {ram.get('normal', 0)}, duplicate {ram.get('duplicate', 0)} pages, "
            f"transferred {human_bytes(ram.get('transferred', 0))}, QEMU total-time {info.get('total-time')} ms"
        )
        if ok and check is not None:
            ok = files_equal_prefix(destination_memory, check, size)
            note += ", destination identical" if ok else ", DESTINATION DIFFERS"
        return Run(elapsed * 1000, cpu[0], cpu[1], ok, note)
    finally:
        source.qmp.close()
        source.close()
        if destination is not None:
            destination.qmp.close()
            destination.close()
        destination_memory.unlink(missing_ok=True)


def files_equal_prefix(memory: Path, image: Path, size: int) -> bool:
    """The first `size` bytes of QEMU's RAM file against the image (QEMU may round the file up)."""
    if memory.stat().st_size == size:
        return files_equal(memory, image)
    with memory.open("rb") as a, image.open("rb") as b:
        for offset in range(0, size, 8 << 20):
            if a.read(8 << 20) != b.read(8 << 20):
                return False
            del offset
    return True


def file_state(path: Path) -> tuple[bytes, int]:
    """xxh3-128 of a file's bytes, and its allocated blocks: QEMU reading a hole through its
    shared mapping would allocate it (and livemig would then read that file differently)."""
    digest = xxhash.xxh3_128()
    with path.open("rb") as file:
        while block := file.read(8 << 20):
            digest.update(block)
    return digest.digest(), path.stat().st_blocks


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size", type=size_in_mib_by_default, default="1G", help="guest size, K/M/G (bare: MiB); default 1G"
    )
    parser.add_argument("--touched", default="1,0.5", help="touched ratios (pages at random); default 1,0.5")
    parser.add_argument("--connections", default="2", help="multifd channels = livemig connections; default 2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-mib", type=int, default=DEFAULT_MAX_BATCH_BYTES >> 20)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--sides", default=",".join(SIDES), help="which sides to run; default all four")
    parser.add_argument(
        "--warm",
        type=size_in_mib_by_default,
        default="8G",
        help="tmpfs bytes written and removed before the first run (0: none); default 8G",
    )
    parser.add_argument(
        "--warm-each",
        type=size_in_mib_by_default,
        default=None,
        help="tmpfs bytes written and removed right before every measured migration (0: none); "
        "default the guest size and 1 GiB more",
    )
    parser.add_argument(
        "--keep-buffers",
        type=float,
        default=MAX_QUIET_SECONDS,
        help="livemig's --keep-buffers-seconds, on both services; default the most (1 h): warm services, as "
        "between back-to-back migrations (see the module docstring); 10 is the services' own default",
    )
    args = parser.parse_args()
    if not MIN_QUIET_SECONDS <= args.keep_buffers <= MAX_QUIET_SECONDS:
        parser.error(f"--keep-buffers: from {MIN_QUIET_SECONDS:g} to {MAX_QUIET_SECONDS:g} seconds")
    keep = ["--keep-buffers-seconds", f"{args.keep_buffers:g}"]
    unknown = sorted(set(args.sides.split(",")) - set(SIDES))
    if unknown:
        parser.error(f"--sides: unknown {', '.join(unknown)} (choose from {', '.join(SIDES)})")
    console = Console(width=200)
    binary = shutil.which(QEMU)
    if binary is None:
        console.print(f"skipped: {QEMU} is not installed (Debian: apt-get install qemu-system-x86)")
        return
    size = args.size
    warm_each = size + GIB if args.warm_each is None else args.warm_each
    touched = [float(t) for t in args.touched.split(",")]
    connections = [int(n) for n in args.connections.split(",")]
    batch_bytes = args.batch_mib << 20
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    console.print(f"{version}; accelerator {accelerator()}" + ("" if accelerator() == "kvm" else " (no /dev/kvm)"))
    console.print(memory_state_line(tmpfs_dir()), soft_wrap=True)
    if args.warm:
        warmed = warm_free_memory(tmpfs_dir(), args.warm)
        console.print(f"free memory warmed: {human_bytes(warmed)} written to {tmpfs_dir()} and removed")
    if warm_each:
        console.print(f"before every measured migration: {human_bytes(warm_each)} written and removed")

    workdir = Path(tempfile.mkdtemp(prefix="livemig-qemu-", dir=tmpfs_dir()))
    qemu_runs: dict[tuple[float, int], list[Run]] = {}
    livemig_runs: dict[tuple[float, int], list[Run]] = {}
    bare_runs: dict[tuple[float, int], list[Run]] = {}
    floor_runs: dict[tuple[float, int], list[Run]] = {}
    notes: dict[tuple[float, int], str] = {}
    try:
        destination = workdir / "livemig-destination"
        destination.mkdir()
        with (
            ServiceProcess("receiver", [*receiver_args(destination, batch_bytes, None), *keep]) as rx,
            ServiceProcess("sender", keep) as tx,
            Ceiling(max(connections), batch_bytes) as ceiling,
            Floor(max(connections), batch_bytes) as floor,
        ):
            for ratio in touched:
                image = workdir / "guest.img"  # the source of every side: livemig's image, QEMU's RAM
                make_image(image, size, ratio, seed=SEED)
                image_state = file_state(image)
                measure_case(tx, rx, image, ratio, connections[0], True, batch_bytes)  # warm-up
                for repeat in range(args.repeat):
                    for count in connections:
                        key = (ratio, count)
                        sides = tuple(args.sides.split(","))
                        for side in sides if repeat % 2 == 0 else sides[::-1]:
                            if warm_each:
                                warm_free_memory(tmpfs_dir(), warm_each)
                            if side in ("bare", "floor"):
                                pairs, runs = (ceiling, bare_runs) if side == "bare" else (floor, floor_runs)
                                payload = max(int(size * ratio), batch_bytes)
                                rate = pairs.measure(payload, count, image)
                                client, server = pairs.cpu_per_gib[count]
                                streamed = payload / GIB
                                runs.setdefault(key, []).append(
                                    Run(payload / rate * 1000, client * streamed, server * streamed, True)
                                )
                            elif side == "qemu":
                                run = qemu_migrate(binary, image, size, count, workdir, image if repeat == 0 else None)
                                qemu_runs.setdefault(key, []).append(run)
                                if repeat == 0:
                                    notes[key] = run.note
                            else:
                                case = measure_case(tx, rx, image, ratio, count, True, batch_bytes, peak_memory=False)
                                livemig_runs.setdefault(key, []).append(
                                    Run(case.duration_ms, case.sender_cpu, case.receiver_cpu, case.ok)
                                )
                            runs = {"qemu": qemu_runs, "livemig": livemig_runs, "bare": bare_runs, "floor": floor_runs}
                            last = runs[side][key][-1]
                            console.print(
                                f"run {repeat + 1}: {ratio:.0%} touched, {count} conn., {side}: {last.ms:.0f} ms, "
                                f"CPU s/GiB {cpu_per_gib(last.cpu_source, size):.2f} + "
                                f"{cpu_per_gib(last.cpu_destination, size):.2f}",
                                soft_wrap=True,
                            )
                if file_state(image) != image_state:
                    raise RuntimeError(f"{image} changed during the runs (its bytes or its allocated blocks)")
                image.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _print(console, size, qemu_runs, livemig_runs, bare_runs, floor_runs, notes, args.repeat, args.markdown)


def _print(
    console: Console,
    size: int,
    qemu_runs: dict[tuple[float, int], list[Run]],
    livemig_runs: dict[tuple[float, int], list[Run]],
    bare_runs: dict[tuple[float, int], list[Run]],
    floor_runs: dict[tuple[float, int], list[Run]],
    notes: dict[tuple[float, int], str],
    repeat: int,
    markdown: bool,
) -> None:
    headers = [
        "image, channels = connections",
        "QEMU ms",
        "livemig ms",
        "livemig / QEMU time",
        "QEMU src CPU s/GiB",
        "QEMU dst CPU s/GiB",
        "livemig sender CPU s/GiB",
        "livemig receiver CPU s/GiB",
        "livemig / QEMU CPU (both ends)",
        "bare gRPC ms (payload only)",
        "bare gRPC / QEMU time",
        "bare gRPC CPU s/GiB (client + server)",
        "ok",
    ]
    rows = []
    for key, qemu in qemu_runs.items():
        if key not in livemig_runs or key not in bare_runs:
            continue  # --sides left one out
        ratio, count = key
        ours = livemig_runs[key]
        q_cpu = median([r.cpu_source + r.cpu_destination for r in qemu])
        l_cpu = median([r.cpu_source + r.cpu_destination for r in ours])
        bare = bare_runs[key]
        q_ms, bare_ms = median([r.ms for r in qemu]), median([r.ms for r in bare])
        rows.append(
            [
                f"{human_bytes(size)}, {ratio:.0%} touched, {count}",
                f"{median([r.ms for r in qemu]):.0f}",
                f"{median([r.ms for r in ours]):.0f}",
                f"{median([r.ms for r in ours]) / max(median([r.ms for r in qemu]), 1):.2f}",
                f"{cpu_per_gib(median([r.cpu_source for r in qemu]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_destination for r in qemu]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_source for r in ours]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_destination for r in ours]), size):.2f}",
                f"{l_cpu / q_cpu:.2f}" if q_cpu else "-",
                f"{bare_ms:.0f}",
                f"{bare_ms / max(q_ms, 1):.2f}",
                f"{cpu_per_gib(median([r.cpu_source + r.cpu_destination for r in bare]), size):.2f}",
                "yes" if all(r.ok for r in qemu + ours) else "NO",
            ]
        )
    title = (
        f"QEMU multifd against livemig (skip zero pages), medians of {repeat}, interleaved; "
        f"CPU per GiB moved (total guest bytes, {size / GIB:.2f} GiB)"
    )
    if markdown:
        console.print(f"\n**{title}**\n", soft_wrap=True)
    print_table(console, title, headers, rows, markdown)
    for (ratio, count), note in notes.items():
        console.print(f"QEMU, {ratio:.0%} touched, {count} channels, first run: {note}", soft_wrap=True)
    _print_floor(console, size, qemu_runs, livemig_runs, floor_runs, repeat, markdown)


def _print_floor(
    console: Console,
    size: int,
    qemu_runs: dict[tuple[float, int], list[Run]],
    livemig_runs: dict[tuple[float, int], list[Run]],
    floor_runs: dict[tuple[float, int], list[Run]],
    repeat: int,
    markdown: bool,
) -> None:
    """livemig against the floor (pread + bare gRPC + pwrite into fresh pages), per end."""
    headers = [
        "image, connections",
        "floor ms",
        "livemig ms",
        "livemig / floor time",
        "floor / QEMU time",
        "floor client CPU s/GiB",
        "livemig sender CPU s/GiB",
        "floor server CPU s/GiB",
        "livemig receiver CPU s/GiB",
        "livemig / floor CPU (both ends)",
        "floor / QEMU CPU",
    ]
    rows = []
    for key, floor in floor_runs.items():
        if key not in livemig_runs or key not in qemu_runs:
            continue  # --sides left one out
        ratio, count = key
        ours, qemu = livemig_runs[key], qemu_runs[key]
        f_ms, l_ms, q_ms = (median([r.ms for r in runs]) for runs in (floor, ours, qemu))
        f_cpu, l_cpu, q_cpu = (median([r.cpu_source + r.cpu_destination for r in runs]) for runs in (floor, ours, qemu))
        rows.append(
            [
                f"{human_bytes(size)}, {ratio:.0%} touched, {count}",
                f"{f_ms:.0f}",
                f"{l_ms:.0f}",
                f"{l_ms / max(f_ms, 1):.2f}",
                f"{f_ms / max(q_ms, 1):.2f}",
                f"{cpu_per_gib(median([r.cpu_source for r in floor]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_source for r in ours]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_destination for r in floor]), size):.2f}",
                f"{cpu_per_gib(median([r.cpu_destination for r in ours]), size):.2f}",
                f"{l_cpu / f_cpu:.2f}" if f_cpu else "-",
                f"{f_cpu / q_cpu:.2f}" if q_cpu else "-",
            ]
        )
    title = (
        f"livemig against the floor (pread + bare gRPC + pwrite into fresh tmpfs pages, same process pairs), "
        f"medians of {repeat}, same run; CPU per GiB of guest"
    )
    if markdown:
        console.print(f"\n**{title}**\n", soft_wrap=True)
    print_table(console, title, headers, rows, markdown)


if __name__ == "__main__":
    sys.exit(main())
