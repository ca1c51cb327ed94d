"""An older commit of livemig against this tree, side by side in one run.

Usage: .venv/bin/python benchmarks/compare_commits.py [OLD_REF] [--size 1G] [--repeat 3] [--markdown]

The old commit is checked out with `git worktree` into a temporary folder and
run with this tree's venv (same Python, grpcio, numpy) through PYTHONPATH: a
folder holding `livemig/{cli,common,sender,receiver}` links into the old tree.
A PYTHONPATH entry is searched before the venv's editable-install finder, and
before anything starts the script checks, in a process with the same
environment, which files `livemig.sender` and `livemig.receiver` load from, so
the old code is the code that runs (and the new one for the new services).

Both pairs of services run at once; the cases (100 % touched without skipping,
50 % touched at random with skipping, 100 % with skipping; 1 and 2 connections
by default)
alternate old/new, with the order flipped every repeat, so machine drift hits
both alike. Prints medians of --repeat, the new/old time ratio and CPU seconds
per GiB moved for each service's process tree. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from livemig.cli.bench import Case, cpu_per_gib, measure_case, receiver_args
from livemig.cli.images import make_image, tmpfs_dir
from livemig.cli.processes import ServiceProcess, process_tree
from livemig.cli.report import human_bytes, print_table
from livemig.cli.units import size_in_mib_by_default
from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES

PACKAGES = ("cli", "common", "sender", "receiver")
# (touched ratio, skip zero pages): the cases for "no more than 10 % slower", and
# issue 25's dense case (every page written, skipping on: each page scanned, none skipped).
CASES = ((1.0, False), (0.5, True), (1.0, True))
# 5433915's default batch (4 MiB), for a tree whose default cannot be read (shipped_batch_bytes)
OLD_DEFAULT_BATCH_MIB = 4


def repo_root() -> Path:
    here = Path(__file__).resolve().parent
    return Path(subprocess.check_output(["git", "-C", str(here), "rev-parse", "--show-toplevel"], text=True).strip())


def add_worktree(root: Path, ref: str, parent: Path) -> tuple[Path, str]:
    """A detached worktree of `ref` under `parent`; returns its path and full commit id."""
    commit = subprocess.check_output(["git", "-C", str(root), "rev-parse", "--verify", f"{ref}^{{commit}}"], text=True)
    path = parent / f"livemig-{ref}"
    subprocess.run(
        ["git", "-C", str(root), "worktree", "add", "--detach", "--quiet", str(path), commit.strip()], check=True
    )
    return path, commit.strip()


def remove_worktree(root: Path, path: Path) -> None:
    subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], check=False)


def import_shim(tree: Path) -> Path:
    """A PYTHONPATH folder whose `livemig` package is the given tree's code."""
    shim = tree / ".compare-pythonpath"
    package = shim / "livemig"
    package.mkdir(parents=True)
    for name in PACKAGES:
        (package / name).symlink_to(tree / name, target_is_directory=True)
    return shim


def python_output(env: dict[str, str], cwd: Path, code: str, quiet: bool = False) -> str:
    """What `code` prints, run by this venv's Python with `env` (a side's PYTHONPATH) added;
    `quiet`: its errors are not shown (the caller handles the failure)."""
    command = [sys.executable, "-c", code]
    stderr = subprocess.DEVNULL if quiet else None
    return subprocess.check_output(command, env={**os.environ, **env}, cwd=cwd, text=True, stderr=stderr)


def loaded_from(env: dict[str, str], cwd: Path) -> list[Path]:
    """Where a `python -m livemig.cli.main`-like process with `env` loads the services from."""
    code = (
        "import livemig.sender.service, livemig.receiver.service, livemig.cli.main\n"
        "for m in (livemig.sender.service, livemig.receiver.service, livemig.cli.main): print(m.__file__)"
    )
    return [Path(line).resolve() for line in python_output(env, cwd, code).split()]


def shipped_batch_bytes(env: dict[str, str], cwd: Path) -> int:
    """The default batch size of the tree `env` loads (each side runs as it ships).

    Until stop 17 the old side always ran with OLD_DEFAULT_BATCH_MIB: comparing two
    recent commits (8 MiB by default) gave the old one 4 MiB batches, and it was
    0.07-0.13 sender CPU s/GiB slower in the skipping cases on identical code (an A/A run, docs/benchmarks.md)."""
    code = "from livemig.common.transport import DEFAULT_MAX_BATCH_BYTES as b; print(b)"
    try:
        return int(python_output(env, cwd, code, quiet=True).strip())
    except subprocess.CalledProcessError:  # a tree from before the constant
        return OLD_DEFAULT_BATCH_MIB << 20


def check_code(env: dict[str, str], cwd: Path, tree: Path, label: str) -> None:
    files = loaded_from(env, cwd)
    if not all(f.is_relative_to(tree.resolve()) for f in files):
        raise SystemExit(f"{label}: livemig loads from {files}, not from {tree}")


@dataclass
class Side:
    label: str
    tree: Path
    env: dict[str, str]
    batch_bytes: int
    tx: ServiceProcess | None = None
    rx: ServiceProcess | None = None
    runs: dict[tuple[float, bool, int], list[Case]] = field(default_factory=dict)


def start(side: Side, stack: ExitStack, destination: Path, batch_bytes: int) -> None:
    folder = destination / side.label
    folder.mkdir()
    side.rx = stack.enter_context(
        ServiceProcess("receiver", receiver_args(folder, batch_bytes, None), env=side.env, cwd=side.tree)
    )
    side.tx = stack.enter_context(ServiceProcess("sender", [], env=side.env, cwd=side.tree))


def median_case(cases: list[Case]) -> Case:
    """The run with the median time (the lower middle one for an even count)."""
    ordered = sorted(cases, key=lambda c: c.duration_ms)
    return ordered[(len(ordered) - 1) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old_ref", nargs="?", default="5433915", help="the older commit (default: 5433915)")
    parser.add_argument(
        "--size", type=size_in_mib_by_default, default="1G", help="guest size, K/M/G (bare: MiB); default 1G"
    )
    parser.add_argument("--connections", default="1,2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--batch-mib",
        type=int,
        default=None,
        help="batch size for both sides (default: each side's own default, read from its tree)",
    )
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    size = args.size
    connections = [int(n) for n in args.connections.split(",")]
    if args.batch_mib is not None and args.batch_mib <= 0:
        parser.error(f"--batch-mib must be at least 1, not {args.batch_mib}")
    new_batch = args.batch_mib << 20 if args.batch_mib else DEFAULT_MAX_BATCH_BYTES

    root = repo_root()
    verify = ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{args.old_ref}^{{commit}}"]
    if subprocess.run(verify, stdout=subprocess.DEVNULL).returncode:
        parser.error(f"{args.old_ref!r} is not a commit of {root}")
    console = Console(width=200)
    scratch = Path(tempfile.mkdtemp(prefix="livemig-compare-"))
    workdir = Path(tempfile.mkdtemp(prefix="livemig-compare-", dir=tmpfs_dir()))
    old_tree: Path | None = None
    try:
        old_tree, old_commit = add_worktree(root, args.old_ref, scratch)
        new_commit = subprocess.check_output(["git", "-C", str(root), "rev-parse", "HEAD"], text=True).strip()
        dirty = subprocess.check_output(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"])
        old_env = {"PYTHONPATH": str(import_shim(old_tree))}
        old_batch = args.batch_mib << 20 if args.batch_mib else shipped_batch_bytes(old_env, old_tree)
        old = Side(f"old {old_commit[:7]}", old_tree, old_env, old_batch)
        new = Side(f"new {new_commit[:7]}{'+changes' if dirty else ''}", root, {}, new_batch)
        check_code(old.env, old.tree, old.tree, old.label)
        check_code(new.env, new.tree, new.tree, new.label)
        console.print(f"{old.label}: {old_tree}; {new.label}: {root} (checked: each loads its own tree)")
        with ExitStack() as stack:
            for side in (old, new):
                start(side, stack, workdir, side.batch_bytes)
                assert side.tx is not None and side.rx is not None
                console.print(
                    f"{side.label}: sender tree {len(process_tree(side.tx.pid))} processes, "
                    f"receiver tree {len(process_tree(side.rx.pid))} processes, "
                    f"batches of {human_bytes(side.batch_bytes)}"
                )
            for touched, skip in CASES:
                image = workdir / "guest.img"
                make_image(image, size, touched, seed=7)
                for side in (old, new):  # warm-up, not measured
                    assert side.tx is not None and side.rx is not None
                    measure_case(side.tx, side.rx, image, touched, connections[0], skip, side.batch_bytes)
                for repeat in range(args.repeat):
                    for count in connections:
                        for side in (old, new) if repeat % 2 == 0 else (new, old):
                            assert side.tx is not None and side.rx is not None
                            case = measure_case(side.tx, side.rx, image, touched, count, skip, side.batch_bytes)
                            side.runs.setdefault((touched, skip, count), []).append(case)
                image.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if old_tree is not None:
            remove_worktree(root, old_tree)
        shutil.rmtree(scratch, ignore_errors=True)
    _print(console, old, new, size, args.repeat, args.markdown)


def _print(console: Console, old: Side, new: Side, size: int, repeat: int, markdown: bool) -> None:
    headers = [
        "case",
        f"{old.label} ms",
        f"{new.label} ms",
        "new / old time",
        "sender CPU s/GiB old",
        "sender CPU s/GiB new",
        "receiver CPU s/GiB old",
        "receiver CPU s/GiB new",
        "runs old (ms)",
        "runs new (ms)",
        "ok",
    ]
    rows = []
    for key, old_runs in old.runs.items():
        touched, skip, count = key
        new_runs = new.runs[key]
        a, b = median_case(old_runs), median_case(new_runs)
        rows.append(
            [
                f"{human_bytes(size)}, {touched:.0%} touched, {'with' if skip else 'no'} skip, {count} conn",
                str(a.duration_ms),
                str(b.duration_ms),
                f"{b.duration_ms / max(a.duration_ms, 1):.2f}",
                f"{cpu_per_gib(a.sender_cpu, a.moved):.2f}",
                f"{cpu_per_gib(b.sender_cpu, b.moved):.2f}",
                f"{cpu_per_gib(a.receiver_cpu, a.moved):.2f}",
                f"{cpu_per_gib(b.receiver_cpu, b.moved):.2f}",
                " ".join(str(c.duration_ms) for c in old_runs),
                " ".join(str(c.duration_ms) for c in new_runs),
                "yes" if all(c.ok for c in old_runs + new_runs) else "NO",
            ]
        )
    title = (
        f"{old.label} against {new.label}: medians of {repeat}, interleaved; "
        "CPU per GiB moved (total guest bytes) of each service's process tree"
    )
    if markdown:
        console.print(f"\n**{title}**\n", soft_wrap=True)
    print_table(console, title, headers, rows, markdown)


if __name__ == "__main__":
    main()
