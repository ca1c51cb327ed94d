"""The benchmark's CPU and memory figures cover a service's whole process tree.

Real processes: a parent (standing in for a service) starts a child (a connection
process or data worker) that burns a known amount of its own CPU time and holds
memory. Nothing here depends on how long anything takes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from livemig.cli.processes import (
    cpu_seconds,
    peak_rss_bytes,
    process_tree,
    reset_tree_peak_rss,
    rss_without_shmem_bytes,
    tree_cpu_seconds,
    tree_peak_rss_bytes,
    tree_proportional_bytes,
)

BURN_SECONDS = 0.3
HOLD_BYTES = 64 << 20
TICK = 0.02  # CPU times in /proc are in clock ticks (1/100 s)

CHILD = f"""
import os, sys
while sum(os.times()[:2]) < {BURN_SECONDS}:
    pass
held = bytearray({HOLD_BYTES})
held[::4096] = b"x" * len(held[::4096])
print("ready", flush=True)
sys.stdin.readline()
del held
print("freed", flush=True)
sys.stdin.readline()
"""

PARENT = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
print(child.pid, flush=True)
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.stdin.write("\\n")
child.stdin.flush()
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.stdin.close()
child.wait()
print("reaped", flush=True)
sys.stdin.readline()
"""


class Tree:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.child_pid = int(self.readline())
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def step(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture
def tree() -> Iterator[Tree]:
    tree = Tree()
    try:
        yield tree
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(tree.child_pid, signal.SIGKILL)  # first, or it reports a broken pipe
        tree.process.kill()
        tree.process.wait()


def test_the_tree_holds_the_process_and_its_live_children(tree: Tree) -> None:
    members = process_tree(tree.pid)
    assert members[0] == tree.pid
    assert tree.child_pid in members
    assert process_tree(tree.child_pid) == [tree.child_pid]


def test_cpu_of_a_live_child_counts_for_the_tree(tree: Tree) -> None:
    assert cpu_seconds(tree.pid) < BURN_SECONDS  # the parent alone did not burn it
    assert tree_cpu_seconds(tree.pid) >= BURN_SECONDS - TICK


def test_cpu_of_an_ended_child_stays_counted_once_reaped(tree: Tree) -> None:
    tree.step()
    assert tree.readline() == "freed"
    tree.step()
    assert tree.readline() == "reaped"
    assert tree.child_pid not in process_tree(tree.pid)
    total = tree_cpu_seconds(tree.pid)
    assert total >= BURN_SECONDS - TICK
    assert total < 2 * BURN_SECONDS + cpu_seconds(tree.pid)  # counted once, not twice


def test_peak_rss_sums_the_tree_and_resets_on_every_member(tree: Tree) -> None:
    assert peak_rss_bytes(tree.pid) < HOLD_BYTES
    assert tree_peak_rss_bytes(tree.pid) >= HOLD_BYTES
    tree.step()  # the child frees its memory
    assert tree.readline() == "freed"
    assert tree_peak_rss_bytes(tree.pid) >= HOLD_BYTES  # a peak outlives the memory
    reset_tree_peak_rss(tree.pid)
    assert peak_rss_bytes(tree.child_pid) < HOLD_BYTES
    assert tree_peak_rss_bytes(tree.pid) < HOLD_BYTES


def test_both_ways_of_finding_children_agree(tree: Tree) -> None:
    """/proc/PID/task/*/children and the parent pids in /proc/*/stat (kernels without the former)."""
    from livemig.cli.processes import _children_by_parent, _children_of

    assert _children_of(tree.pid) == [tree.child_pid]
    assert _children_by_parent()[tree.pid] == [tree.child_pid]


def test_private_rss_leaves_out_shared_mappings(shm_dir) -> None:
    """A receiver's data workers map destination memory: that is not the service's own."""
    script = (
        "import mmap, os, sys\n"
        f"fd = os.open({str(shm_dir / 'shared')!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
        f"os.ftruncate(fd, {HOLD_BYTES})\n"
        f"m = mmap.mmap(fd, {HOLD_BYTES})\n"
        f"for start in range(0, {HOLD_BYTES}, 1 << 20): m[start : start + (1 << 20)] = b'x' * (1 << 20)\n"
        "print('mapped', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "mapped"
        assert peak_rss_bytes(child.pid) >= HOLD_BYTES
        assert rss_without_shmem_bytes(child.pid) < HOLD_BYTES
    finally:
        child.communicate("\n", timeout=30)


def test_a_forked_tree_costs_its_shared_pages_once() -> None:
    """A parent holds HOLD_BYTES and forks children that only read them: summed over the
    tree, RSS counts the pages once per process, the proportional set size once."""
    script = (
        "import os, sys\n"
        f"held = bytearray({HOLD_BYTES})\n"
        "held[::4096] = b'x' * len(held[::4096])\n"
        "children = []\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        sys.stdin.readline()\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "print('forked', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "forked"
        tree = process_tree(parent.pid)
        assert len(tree) == 4
        assert sum(rss_without_shmem_bytes(pid) for pid in tree) >= 4 * HOLD_BYTES
        assert HOLD_BYTES <= tree_proportional_bytes(parent.pid) < 2 * HOLD_BYTES
    finally:
        parent.communicate("\n" * 5, timeout=30)
