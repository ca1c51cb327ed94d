"""Where both services' CPU goes, by kernel path and library, during real migrations.

Run: .venv/bin/python benchmarks/perf_split.py --size 1G --connections 2 [--batch-mib 8] [--no-perf]
     [--detail interpreter] [--touched 0.5 --skip]

Starts a receiver and a sender on loopback, writes a guest image (every page
touched, or `--touched` of them at random), runs one warm-up migration, then `--migrations` more and prints each
service tree's CPU seconds per GiB moved (and the RSS without shmem of each process
after them). Unless --no-perf, `perf record -e cpu-clock -a -g` (Debian
`linux-perf`) runs over the measured migrations and every sample of each tree is
put in the first category its stack matches: pwrite, preadv, sendmsg, recvmsg,
page faults, futex, epoll, other syscalls, interrupts, user memmove, numpy,
gRPC's C code, the interpreter. `--detail CATEGORY` also lists the functions
the samples of one category were in (the leaf of each stack), to see what
"interpreter" or "other" is made of. perf itself adds a few per cent of CPU.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import time
from pathlib import Path

from loopback import loopback

from livemig.cli.processes import process_tree, rss_without_shmem_bytes, tree_cpu_seconds
from livemig.cli.units import parse_size
from livemig.common.human import format_bytes
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

RATE = 999
CATEGORIES = (
    ("pwrite", "__x64_sys_pwrite64"),
    ("preadv", "do_preadv"),
    ("sendmsg", "__sys_sendmsg"),
    ("recvmsg", "__sys_recvmsg"),
    ("page faults", "exc_page_fault"),
    ("futex", "futex"),
    ("epoll", "epoll"),
    ("other syscalls", "do_syscall_64"),
    ("interrupts", "irq"),
    ("user memmove", "__memmove"),
    ("numpy", "_multiarray_umath"),
    ("gRPC C", "cygrpc"),
    ("interpreter", "libpython"),
)


def split(perf_data: Path, roles: dict[int, str], gib: float, detail: str = "") -> list[str]:
    script = subprocess.run(
        ["perf", "script", "-i", str(perf_data), "-F", "pid,tid,comm,ip,sym,dso"], capture_output=True, text=True
    ).stdout
    samples: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)  # of `detail`
    role: str | None = None
    stack: list[str] = []

    def count() -> None:
        if role is None:
            return
        text = "\n".join(stack)
        category = next((name for name, key in CATEGORIES if key in text), "other")
        samples[role][category] += 1
        if category == detail and stack:
            leaves[role][stack[0].split(maxsplit=1)[-1]] += 1  # "ip symbol+offset (dso)" without the ip

    for line in script.splitlines():
        if not line.strip():
            continue
        if not line.startswith(("\t", " ")):
            count()
            match = re.match(r"(.*?)\s+(\d+)/(\d+)", line)
            role = roles.get(int(match.group(2))) if match else None
            stack = []
        else:
            stack.append(line.strip())
    count()
    lines = []
    for name in ("sender", "receiver"):
        total = sum(samples[name].values())
        parts = ", ".join(f"{k} {v / RATE / gib:.3f}" for k, v in samples[name].most_common())
        lines.append(f"{name}: {total / RATE / gib:.2f} CPU s/GiB sampled: {parts}")
        for leaf, hits in leaves[name].most_common(15):
            lines.append(f"    {detail}: {hits / RATE / gib:.3f} {re.sub(r'[+]0x[0-9a-f]+', '', leaf)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default="1G")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--migrations", type=int, default=3)
    parser.add_argument("--batch-mib", type=int, default=DEFAULT_MAX_BATCH_BYTES >> 20)
    parser.add_argument("--touched", type=float, default=1.0, help="share of the image's pages written")
    parser.add_argument("--skip", action="store_true", help="skip zero pages (off by default, as in the API)")
    parser.add_argument("--no-perf", action="store_true", help="CPU per GiB only")
    parser.add_argument("--detail", default="", help="list the functions of one category (e.g. interpreter)")
    args = parser.parse_args()
    size, batch = args.size, args.batch_mib << 20
    receiver_args = ["--max-batch-bytes", str(batch)]
    options = {"connections": args.connections, "max_batch_bytes": batch, "skip_zero_pages": args.skip}
    with loopback("livemig-perf-", size, args.touched, receiver_args, **options) as pair:
        tx, rx = pair.sender, pair.receiver
        perf_data = pair.workdir / "perf.data"
        recorder = None
        if not args.no_perf:
            record = ["perf", "record", "-e", "cpu-clock", "-F", str(RATE), "-a", "-g", "-o", str(perf_data)]
            recorder = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        before = tree_cpu_seconds(tx.pid), tree_cpu_seconds(rx.pid)
        durations = [pair.migrate() for _ in range(args.migrations)]
        after = tree_cpu_seconds(tx.pid), tree_cpu_seconds(rx.pid)
        roles = {pid: name for name, service in (("sender", tx), ("receiver", rx)) for pid in process_tree(service.pid)}
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(timeout=120)
        gib = args.migrations * size / 2**30
        print(
            f"{args.migrations} migrations of {format_bytes(size)} ({args.touched:.0%} touched, "
            f"skip {'on' if args.skip else 'off'}), {args.connections} connections, "
            f"{args.batch_mib} MiB batches: " + ", ".join(f"{d} ms" for d in durations)
        )
        print(f"CPU s/GiB: sender {(after[0] - before[0]) / gib:.2f}, receiver {(after[1] - before[1]) / gib:.2f}")
        time.sleep(1.5)
        print(
            "RSS without shmem, MiB, after: "
            + "; ".join(
                f"{name} " + " ".join(str(rss_without_shmem_bytes(pid) >> 20) for pid in process_tree(service.pid))
                for name, service in (("sender", tx), ("receiver", rx))
            )
        )
        if recorder is not None:
            print("\n".join(split(perf_data, roles, gib, args.detail)))


if __name__ == "__main__":
    main()
