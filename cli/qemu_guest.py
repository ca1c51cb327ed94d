"""A real Linux guest for QEMU, built from Debian packages: the demo's, the tests' and
the benchmarks' VM.

- Kernel: Debian's cloud kernel (`linux-image-cloud-amd64`), fetched with
  `apt-get download` and unpacked with `dpkg-deb -x` into a cache folder (nothing is
  installed on the host).
- Initramfs: busybox (`busybox-static`) and an init script, packed here as a gzip'd
  newc cpio archive, plus `memdirty`, a small static C program (built with gcc when
  present) that holds memory and keeps dirtying it.
- The guest proves its own memory: at boot it fills a blob of random bytes, prints
  its md5 ("livemig-guest: ready <md5>"), then once a second prints a tick counter
  and the blob's md5 again. After a migration the destination's serial console
  must go on counting with the same md5.

Kernel command line knobs (`livemig.*`): blob=MiB of the checked blob, fill=MiB of
page cache to fill (a file in the rootfs; random bytes, or with files=1 copies of
the busybox program and text, as a page cache of files holds), hold=MiB for memdirty to hold,
dirty=MiB/s it dirties.

QEMU runs with TCG: nested KVM stalls during kernel boot on the machines this was
built on, and TCG boots this guest in about 10 s.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from livemig.common.qmp import QmpConnection, qmp_connection, wait_for_qmp

KERNEL_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
READY = re.compile(r"livemig-guest: ready ([0-9a-f]{32})")
TICK = re.compile(r"livemig-guest: tick (\d+) ([0-9a-f]{32})")

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
arg() { sed -n "s/.*livemig\.$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
blob=$(arg blob); fill=$(arg fill); hold=$(arg hold); dirty=$(arg dirty); files=$(arg files)
dd if=/dev/urandom of=/blob bs=1M count=${blob:-8} 2>/dev/null
if [ -n "$fill" ] && [ "$fill" -gt 0 ]; then
  if [ "$files" = 1 ]; then  # file contents a page cache holds: programs and text, not noise
    i=0; while [ $i -lt 8 ]; do cat /bin/busybox /init; busybox --help; i=$((i + 1)); done | head -c 16777216 > /seed
  else
    dd if=/dev/urandom of=/seed bs=1M count=16 2>/dev/null
  fi
  i=0; while [ $i -lt $((fill / 16)) ]; do cat /seed; i=$((i + 1)); done > /fill
  echo "livemig-guest: filled ${fill} MiB of page cache"
fi
if [ -n "$hold" ] && [ "$hold" -gt 0 ] && [ -x /bin/memdirty ]; then
  /bin/memdirty "$hold" "${dirty:-0}" &
  sleep 1
fi
echo "livemig-guest: ready $(md5sum < /blob | cut -c1-32)"
n=0
while true; do
  n=$((n + 1))
  echo "livemig-guest: tick $n $(md5sum < /blob | cut -c1-32)"
  sleep 1
done
"""

# Holds MiB of memory filled with non-zero bytes, then dirties MiB/s of it, page by page.
MEMDIRTY_C = r"""
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64, rate = argc > 2 ? strtoul(argv[2], 0, 10) : 0;
    size_t size = mib << 20, pages = size / 4096, page = 0;
    unsigned char *memory = malloc(size);
    unsigned long x = 88172645463325252UL;
    if (!memory) return 1;
    for (size_t i = 0; i < size; i += 8) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; memcpy(memory + i, &x, 8); }
    printf("livemig-guest: holding %zu MiB, dirtying %zu MiB/s\n", mib, rate);
    fflush(stdout);
    for (;;) {
        struct timespec tick = {0, 10 * 1000 * 1000};
        for (size_t n = 0; n < rate * 256 / 100; n++, page = (page + 1) % pages) memory[page * 4096] += 1;
        nanosleep(&tick, 0);
    }
}
"""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "livemig" / "guest"


def missing_tools() -> list[str]:
    """What this machine lacks to boot the guest (Debian package names)."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append("qemu-system-x86")
    if not _static_executable(BUSYBOX):
        missing.append("busybox-static")
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        missing.append("apt (apt-get, dpkg-deb)")
    return missing


def _static_executable(path: Path) -> bool:
    """An ELF file with no program interpreter (PT_INTERP): it runs in an empty initramfs."""
    try:
        elf = path.read_bytes()
    except OSError:
        return False
    if elf[:5] != b"\x7fELF\x02":  # 64-bit ELF
        return False
    phoff, phentsize, phnum = struct.unpack_from("<Q", elf, 0x20)[0], *struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def fetch_kernel(cache: Path | None = None) -> Path:
    """Debian's cloud kernel image, downloaded (not installed) into the cache once."""
    cache = cache or cache_dir()
    found = sorted(cache.glob("kernel/boot/vmlinuz-*"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    package = _kernel_package()
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        subprocess.run(["apt-get", "download", "-q", package], cwd=scratch, check=True, capture_output=True)
        deb = next(Path(scratch).glob("*.deb"))
        unpacked = Path(scratch) / "kernel"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        for module_tree in (unpacked / "lib", unpacked / "usr"):
            shutil.rmtree(module_tree, ignore_errors=True)  # modules: the busybox guest loads none
        os.replace(unpacked, cache / "kernel")
    return sorted(cache.glob("kernel/boot/vmlinuz-*"))[-1]


def _kernel_package() -> str:
    """The versioned package the cloud kernel's metapackage depends on; the package
    lists are fetched once (as root) where this machine has none yet."""
    for attempt in range(2):
        depends = subprocess.run(["apt-cache", "depends", KERNEL_PACKAGE], capture_output=True, text=True)
        match = re.search(r"Depends: (linux-image-\S+)", depends.stdout)
        if match is not None:
            return match.group(1)
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
    raise RuntimeError(f"Debian's {KERNEL_PACKAGE} names no kernel package here (apt-get update?)")


def _cpio_entry(archive: io.BytesIO, name: str, mode: int, data: bytes = b"", inode: int = 0) -> None:
    """One newc ("070701") cpio entry, as the kernel's initramfs unpacker reads it."""
    encoded = name.encode() + b"\0"
    fields = [inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
    archive.write(b"070701" + b"".join(b"%08X" % value for value in fields) + encoded)
    archive.write(b"\0" * (-(110 + len(encoded)) % 4))
    archive.write(data)
    archive.write(b"\0" * (-len(data) % 4))


def build_memdirty(folder: Path) -> Path | None:
    """memdirty, statically linked; None where gcc or a static libc is missing."""
    if shutil.which("gcc") is None:
        return None
    source, binary = folder / "memdirty.c", folder / "memdirty"
    source.write_text(MEMDIRTY_C)
    built = subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(source)], capture_output=True)
    return binary if built.returncode == 0 else None


def build_initramfs(destination: Path, cache: Path | None = None) -> Path:
    """The guest's initramfs (busybox, init, memdirty), gzip'd; rebuilt only when missing."""
    if destination.exists():
        return destination
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    archive = io.BytesIO()
    inode = 1
    for folder in ("bin", "dev", "proc", "sys", "tmp"):
        _cpio_entry(archive, folder, 0o040755, inode=inode)
        inode += 1
    files = [("bin/busybox", BUSYBOX.read_bytes()), ("init", INIT_SCRIPT.encode())]
    memdirty = build_memdirty(cache)
    if memdirty is not None:
        files.append(("bin/memdirty", memdirty.read_bytes()))
    for name, data in files:
        _cpio_entry(archive, name, 0o100755, data, inode=inode)
        inode += 1
    _cpio_entry(archive, "TRAILER!!!", 0)
    partial = destination.with_suffix(".partial")
    partial.write_bytes(gzip.compress(archive.getvalue(), compresslevel=6))
    os.replace(partial, destination)
    return destination


@dataclass(frozen=True, slots=True)
class GuestImage:
    kernel: Path
    initramfs: Path


def prepare_guest(cache: Path | None = None) -> GuestImage:
    cache = cache or cache_dir()
    # Named by what goes in, so that a changed init script or busybox is never served stale.
    content = hashlib.sha256(INIT_SCRIPT.encode() + MEMDIRTY_C.encode() + BUSYBOX.read_bytes()).hexdigest()[:16]
    return GuestImage(fetch_kernel(cache), build_initramfs(cache / f"initramfs-{content}.gz", cache))


@dataclass(slots=True)
class GuestOptions:
    """What the guest does at boot (the livemig.* kernel parameters)."""

    blob_mib: int = 8
    fill_mib: int = 0
    fill_with_files: bool = False  # the page cache holds program and text bytes, not random ones
    hold_mib: int = 0
    dirty_mib_per_second: int = 0

    def cmdline(self) -> str:
        return (
            "console=ttyS0 panic=-1 quiet "
            f"livemig.blob={self.blob_mib} livemig.fill={self.fill_mib} livemig.files={int(self.fill_with_files)} "
            f"livemig.hold={self.hold_mib} livemig.dirty={self.dirty_mib_per_second}"
        )


def qemu_argv(
    image: GuestImage | None,
    memory: Path,
    size_mib: int,
    qmp: str,
    serial: Path,
    options: GuestOptions,
    backend_id: str = "mem",
    share: bool = True,
    incoming: bool = False,
) -> list[str]:
    """The QEMU command line of this guest: RAM in `memory` (a shared file backend), a
    QMP socket, the serial console into a file. Source and destination run the same
    machine and devices; the destination adds `-incoming defer`. Without an image the
    guest runs only its firmware (SeaBIOS, finding nothing to boot): a running guest
    in a few milliseconds, whose RAM holds whatever the file held."""
    argv = [
        QEMU,
        "-accel",
        "tcg",
        "-machine",
        f"pc,memory-backend={backend_id}",
        "-m",
        f"{size_mib}M",
        "-object",
        f"memory-backend-file,id={backend_id},size={size_mib}M,mem-path={memory},share={'on' if share else 'off'}",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-chardev",
        f"file,id=console,path={serial}",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{qmp},server=on,wait=off",
    ]
    if image is not None:
        argv += ["-kernel", str(image.kernel), "-initrd", str(image.initramfs), "-append", options.cmdline()]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


@dataclass
class QemuVm:
    """A QEMU process of this guest, with its QMP socket and serial log."""

    argv: list[str]
    qmp: str
    serial: Path
    process: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        self.serial.touch()
        self.process = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        wait_for_qmp(self.qmp, 30, alive=lambda: self.process.poll() is None)

    def connect(self, timeout: float = 10.0) -> QmpConnection:
        return QmpConnection(self.qmp, timeout)

    def run_state(self) -> str:
        with qmp_connection(self.qmp) as qmp:
            return qmp.run_state()

    def console(self) -> str:
        return self.serial.read_text(errors="replace")

    def wait_for(self, pattern: re.Pattern[str], timeout: float, after: int = 0) -> re.Match[str]:
        """The first match of pattern in the serial log past offset `after`."""
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.console(), after)
            if match is not None:
                return match
            if self.process.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.process.returncode}): {self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {pattern.pattern!r} on the guest console within {timeout:g} s")
            time.sleep(0.1)

    def output(self) -> str:
        if self.process.poll() is None or self.process.stdout is None:
            return ""
        return self.process.stdout.read().decode(errors="replace")[-2000:]

    def __enter__(self) -> QemuVm:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def boot(
    image: GuestImage, folder: Path, memory: Path, size_mib: int, options: GuestOptions, name: str = "source"
) -> QemuVm:
    """Start the guest on `memory` and return once QEMU's QMP socket exists (the guest
    is still booting: wait_for(READY) waits for it)."""
    qmp = str(folder / f"{name}.qmp")
    serial = folder / f"{name}.console"
    return QemuVm(qemu_argv(image, memory, size_mib, qmp, serial, options), qmp, serial)


def main(argv: list[str] | None = None) -> None:
    """`python -m livemig.cli.qemu_guest --memory M --qmp Q --serial S [...]`: prepare the
    guest (kernel, initramfs) and print its QEMU command line as shell words
    (scripts/qemu-demo.sh uses it; placeholders such as {mem[mem]} pass through)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--memory", required=True, help="the RAM file (memory-backend-file mem-path)")
    parser.add_argument("--size", type=int, default=512, help="MiB")
    parser.add_argument("--qmp", required=True)
    parser.add_argument("--serial", required=True)
    parser.add_argument("--fill", type=int, default=0, help="MiB of page cache the guest fills")
    parser.add_argument("--hold", type=int, default=0, help="MiB a process in the guest holds")
    parser.add_argument("--dirty", type=int, default=0, help="MiB/s it dirties")
    parser.add_argument("--incoming", action="store_true", help="the destination's command (-incoming defer)")
    args = parser.parse_args(argv)
    options = GuestOptions(fill_mib=args.fill, hold_mib=args.hold, dirty_mib_per_second=args.dirty)
    words = qemu_argv(
        prepare_guest(), Path(args.memory), args.size, args.qmp, Path(args.serial), options, incoming=args.incoming
    )
    print(shlex.join(words))


if __name__ == "__main__":
    main()
