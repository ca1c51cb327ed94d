"""Start livemig services as real child processes and learn their bound ports."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

READY = re.compile(r"livemig (\w+) listening on (\S+):(\d+)")
METRICS = re.compile(r"livemig (\w+) metrics on (\S+):(\d+)")
DATA_WORKER = re.compile(r"data worker (\d+) listening on (\S+):(\d+)")


class ServiceProcess:
    """A `livemig receiver` or `livemig sender` process on loopback."""

    def __init__(
        self,
        role: str,
        args: Sequence[str],
        log_path: Path | None = None,
        timeout: float = 30.0,
        global_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        if not any(a.startswith("--tls-") or a == "--insecure" for a in args):
            args = [*args, "--insecure"]  # local processes of tests, demo and benchmarks
        command = [sys.executable, "-m", "livemig.cli.main", *global_args, role, "--listen", "127.0.0.1:0", *args]
        self.role = role
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )
        self._log = log_path.open("w") if log_path else None
        self._ready = threading.Event()
        self.port = 0
        self.metrics_port = 0
        self.data_ports: dict[int, int] = {}  # receiver: data worker index -> port
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout) or not self.port:
            self.stop()
            raise RuntimeError(f"livemig {role} did not start:\n" + "".join(self.lines[-30:]))

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if self._log:
                self._log.write(line)
                self._log.flush()
            data_worker = DATA_WORKER.search(line)
            if data_worker:
                self.data_ports[int(data_worker.group(1))] = int(data_worker.group(3))
            metrics = METRICS.search(line)
            if metrics:
                self.metrics_port = int(metrics.group(3))
            match = READY.search(line)
            if match and not self.port:
                self.port = int(match.group(3))
                self._ready.set()
        self._ready.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_address(self) -> str:
        """A receiver's first data worker (page streams are served there, not on the API port)."""
        return f"127.0.0.1:{self.data_ports[0]}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            time.sleep(0.05)
            self._log.close()
            self._log = None
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parentheses)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _children_of(pid: int) -> list[int] | None:
    """Children of `pid` from /proc/PID/task/*/children; None where the kernel lacks the file."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as file:
                children.extend(int(child) for child in file.read().split())
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended
            return None  # no CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
    return children


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from the parent pid in each /proc/*/stat (any kernel)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    return children


def children_of(pid: int) -> list[int]:
    """The live children of `pid` (on any kernel)."""
    children = _children_of(pid)
    return children if children is not None else _children_by_parent().get(pid, [])


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants, parents first.

    A service is a process tree now (the sender's fork server and connection
    processes, the receiver's data workers), so its cost is the tree's.
    Children come from /proc/PID/task/*/children (a few small files per member,
    cheap enough to sample during a migration); where the kernel lacks them
    (no CONFIG_PROC_CHILDREN), from the parent pid in every /proc/*/stat.
    Processes that exit while the tree is read are left out.
    """
    tree, index = [pid], 0
    by_parent: dict[int, list[int]] | None = None
    while index < len(tree):
        children = _children_of(tree[index]) if by_parent is None else None
        if children is None:
            by_parent = by_parent if by_parent is not None else _children_by_parent()
            children = by_parent.get(tree[index], [])
        tree.extend(sorted(set(children)))
        index += 1
    return tree


def peak_rss_bytes(pid: int) -> int:
    """VmHWM of one process (peak resident set); 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_peak_rss_bytes(pid: int) -> int:
    """Sum of VmHWM over the process tree of `pid`.

    An upper bound of the tree's peak: members forked from one fork server share
    their preloaded pages (counted in each), and members peak at different times.
    Processes that ended before this call are not counted.
    """
    return sum(peak_rss_bytes(member) for member in process_tree(pid))


def rss_without_shmem_bytes(pid: int) -> int:
    """Resident memory of one process without shared memory (RssAnon + RssFile); 0 when gone.

    A receiver in mapped write mode maps the destination files (shared memory) in each
    data worker: VmHWM counts those pages once per worker that touched them, though
    they are the guest's destination memory, not the service's own. Pages a forked
    process still shares copy-on-write with its fork server count here in full, in
    each: compare a process with its fork server by this, but add up a tree with
    proportional_bytes."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    return sum(fields.values())


def proportional_bytes(pid: int) -> int:
    """Proportional set size of one process without shared memory (Pss_Anon + Pss_File
    of /proc/PID/smaps_rollup, Linux 5.7); 0 when gone or unreadable.

    A page mapped by k processes counts 1/k in each, so a tree's sum is what it costs the
    host: a connection process forked from a fork server shares most of its ~46 MiB of
    resident memory with that server and with its siblings, and summing their
    rss_without_shmem_bytes counted those pages once per process (128 connections: 8 GB
    where the host spent a fraction of it)."""
    total = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Pss_Anon", "Pss_File"):
                total += int(value.split()[0]) * 1024
    return total


def tree_proportional_bytes(pid: int) -> int:
    """What the process tree of `pid` costs in memory, shared pages split among their users."""
    return sum(proportional_bytes(member) for member in process_tree(pid))


class TreePeakSampler:
    """Peak RSS of process trees that include short-lived members.

    A connection process lives for one migration, so its VmHWM is gone once the
    migration ends and a reading taken afterwards misses it. While running,
    this samples the sum of VmHWM over each tree every `interval` seconds
    (VmHWM is itself a peak, so sampling misses only members that live less
    than one interval) and keeps the largest sum per root. `proportional_peaks` keeps
    the largest sampled proportional set size of each tree without shared memory
    (tree_proportional_bytes): the memory the tree costs the host.
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.25) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peaks = dict.fromkeys(self.pids, 0)
        self.proportional_peaks = dict.fromkeys(self.pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-peak-rss", daemon=True)

    def _sample(self) -> None:
        for pid in self.pids:
            self.peaks[pid] = max(self.peaks[pid], tree_peak_rss_bytes(pid))
            self.proportional_peaks[pid] = max(self.proportional_peaks[pid], tree_proportional_bytes(pid))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreePeakSampler:
        for pid in self.pids:
            reset_tree_peak_rss(pid)
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def reset_peak_rss(pid: int) -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def reset_tree_peak_rss(pid: int) -> None:
    """reset_peak_rss on every live member of the process tree of `pid`."""
    for member in process_tree(pid):
        reset_peak_rss(member)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time one process (all its threads) has used so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_and_reaped_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime: the process and the children it has reaped."""
    fields = _stat_fields(pid)
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a service: its whole process tree, ended members included.

    Each live member counts its own time plus its reaped children's
    (cutime/cstime): a connection process that ended was reaped by the fork
    server, so its time is in the fork server's cutime. A live process's cutime
    never includes live descendants, so nothing is counted twice. Time of
    processes whose parent never waits for them is lost (none in livemig).
    """
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _own_and_reaped_cpu_seconds(member)
    return total


class GuestProcess:
    """A running `livemig memtouch` guest (a child process), ready once its memory is touched."""

    def __init__(self, memory: Path, args: Sequence[str] = ()) -> None:
        self.memory = memory
        self.process = subprocess.Popen(
            [sys.executable, "-m", "livemig.cli.main", "memtouch", "--memory", str(memory), *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if "ready" not in line:
            self.close()
            raise RuntimeError(f"memtouch did not start: {line!r}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def dirty_log(self) -> Path:
        return self.memory.with_name(self.memory.name + ".dirty")

    @property
    def stopped(self) -> bool:
        return Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"

    def resume(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(10)

    def __enter__(self) -> GuestProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
