"""Profile both services' process trees with py-spy during real migrations.

Run: .venv/bin/python benchmarks/profile_migration.py --size 1G --connections 2 [--out DIR]

Starts a receiver and a sender on loopback, writes a guest image (every page touched by
default), runs one warm-up migration, then records `py-spy record --subprocesses` on each
service tree while `--migrations` more run back to back. Writes the collapsed stacks
(`sender.txt`, `receiver.txt`, one line per stack with its sample count) to --out and
prints, per service, where the samples go: the innermost livemig or grpc frame of each
stack ("own" time, idle pollers left out) and a few whole phases.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loopback import loopback

from livemig.cli.units import parse_size
from livemig.common.human import format_bytes

IDLE = ("wait (threading.py", "select (", "poll (", "_poll_for_event", "channel_spin", "_next (", "get (queue.py")


def summarise(path: Path, top: int) -> list[str]:
    """The innermost frame of each busy stack, by share of busy samples."""
    own: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if any(marker in leaf for marker in IDLE):
            continue
        samples = int(count)
        busy += samples
        own[leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]] += samples
    lines = [f"{path.stem}: {busy} busy samples"]
    lines += [f"  {100 * n / max(busy, 1):5.1f} %  {name}" for name, n in own.most_common(top)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default="1G")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--touched", type=float, default=1.0)
    parser.add_argument("--migrations", type=int, default=3)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--receiver-arg", action="append", default=[], help="extra receiver argument")
    parser.add_argument(
        "--py-spy-arg", action="append", default=[], help="extra py-spy record argument (e.g. --gil: GIL holders only)"
    )
    parser.add_argument("--out", type=Path, default=Path("profiles"))
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    size = args.size
    with loopback("livemig-profile-", size, args.touched, args.receiver_arg, connections=args.connections) as pair:
        record = [
            py_spy,
            "record",
            "--subprocesses",
            "--nonblocking",
            "--format",
            "raw",
            "--rate",
            str(args.rate),
            *args.py_spy_arg,
        ]
        recorders = [
            subprocess.Popen(
                [*record, "--pid", str(service.pid), "--output", str(args.out / f"{service.role}.txt")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for service in (pair.sender, pair.receiver)
        ]
        time.sleep(1.0)  # py-spy attaches
        durations = [pair.migrate() for _ in range(args.migrations)]
        for recorder in recorders:
            recorder.send_signal(subprocess.signal.SIGINT)
        for recorder in recorders:
            recorder.wait(timeout=60)
    times = ", ".join(f"{d} ms" for d in durations)
    print(f"migrations of {format_bytes(size)}, {args.connections} connections: {times}")
    for role in ("sender", "receiver"):
        path = args.out / f"{role}.txt"
        if path.exists():
            print("\n".join(summarise(path, args.top)))


if __name__ == "__main__":
    main()
