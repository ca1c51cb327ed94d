"""Two test hosts in network namespaces joined by a veth pair (for fault tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

LIVEMIG = [sys.executable, "-m", "livemig.cli.main"]
RECEIVER_PORT = 7868
SENDER_PORT = 7867  # on the source namespace's loopback


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = f"lm-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add refused: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class TwoHosts:
    """Namespaces `src` and `dst` with 10.213.78.1 and .2 on a veth pair (rate-capped)."""

    def __init__(self, rate: str = "1gbit") -> None:
        tag = os.getpid()
        self.src, self.dst = f"lmf-src-{tag}", f"lmf-dst-{tag}"
        self.src_if, self.dst_if = f"lfs{tag}", f"lfd{tag}"
        self.src_ip, self.dst_ip = "10.213.78.1", "10.213.78.2"
        _ip("netns", "add", self.src)
        _ip("netns", "add", self.dst)
        _ip("link", "add", self.src_if, "type", "veth", "peer", "name", self.dst_if)
        _ip("link", "set", self.src_if, "netns", self.src)
        _ip("link", "set", self.dst_if, "netns", self.dst)
        for ns, dev, ip in ((self.src, self.src_if, self.src_ip), (self.dst, self.dst_if, self.dst_ip)):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "1mb",
                    "latency",
                    "50ms",
                ],
                check=True,
                capture_output=True,
            )

    def command(self, namespace: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def start_services(self, memory_dir: Path) -> list[subprocess.Popen]:
        """A receiver in dst (on dst_ip:RECEIVER_PORT, destination memory in memory_dir) and a
        sender in src (on 127.0.0.1:SENDER_PORT); returns both once they listen."""
        receiver = subprocess.Popen(
            self.command(
                self.dst,
                [
                    *LIVEMIG,
                    "receiver",
                    "--insecure",
                    "--listen",
                    f"{self.dst_ip}:{RECEIVER_PORT}",
                    "--memory-dir",
                    str(memory_dir),
                ],
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sender = subprocess.Popen(
            self.command(self.src, [*LIVEMIG, "sender", "--insecure", "--listen", f"127.0.0.1:{SENDER_PORT}"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for process in (receiver, sender):
            while "listening" not in (line := process.stdout.readline()):
                if not line:
                    receiver.kill()
                    sender.kill()
                    raise RuntimeError("service did not start")
        return [receiver, sender]

    def send_migration(self, image: Path, *options: str) -> list[str]:
        """The command line of `livemig send-migration --json` for `image`, run in src."""
        return self.command(
            self.src,
            [
                *LIVEMIG,
                "send-migration",
                "--insecure",
                "--sender",
                f"127.0.0.1:{SENDER_PORT}",
                "--destination",
                f"{self.dst_ip}:{RECEIVER_PORT}",
                "--memory",
                str(image),
                *options,
                "--json",
            ],
        )

    def cut(self) -> None:
        """Take the link down on both ends: packets vanish, no RST, no FIN."""
        _ip("-n", self.src, "link", "set", self.src_if, "down")
        _ip("-n", self.dst, "link", "set", self.dst_if, "down")

    def close(self) -> None:
        for ns in (self.src, self.dst):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextlib.contextmanager
def serving_hosts(rate: str, memory_dir: Path) -> Iterator[TwoHosts]:
    """Two hosts joined by a link of `rate`, a receiver and a sender serving on them;
    everything gone at the end."""
    two = TwoHosts(rate=rate)
    processes: list[subprocess.Popen] = []
    try:
        processes += two.start_services(memory_dir)
        yield two
    finally:
        for process in processes:
            process.kill()
            process.wait()
        two.close()
