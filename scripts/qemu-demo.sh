#!/usr/bin/env bash
# A real VM, migrated: Debian's cloud kernel and a busybox initramfs boot under QEMU
# (TCG) with their RAM in a shared file; livemig moves the RAM (zero pages skipped,
# verified), QEMU the device state (x-ignore-shared), and the guest runs on at the
# destination. The guest proves its memory itself: it printed the md5 of a blob of
# random bytes at boot, and prints it again every second, counting, at the destination.
# Everything it starts is stopped on exit and its files removed.
#
#   scripts/qemu-demo.sh                      # 512 MiB guest, 64 MiB of page cache filled
#   SIZE_MIB=256 FILL_MIB=0 CONNECTIONS=1 scripts/qemu-demo.sh
#
# Needs qemu-system-x86, busybox-static and apt (the kernel is fetched with
# `apt-get download`, never installed); `./dev test` installs the first two on Debian.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-512}
FILL_MIB=${FILL_MIB:-64}
CONNECTIONS=${CONNECTIONS:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
  echo "qemu-demo: $*" >&2
  exit 1
}
[ -x "$ROOT/.venv/bin/livemig" ] || "$ROOT/dev" --version >/dev/null || die "cannot set up the venv (./dev)"
PY="$ROOT/.venv/bin/python"
LIVEMIG="$ROOT/.venv/bin/livemig"
command -v qemu-system-x86_64 >/dev/null || die "needs QEMU: apt-get install qemu-system-x86"

WORK=$(mktemp -d /dev/shm/livemig-qemu-demo.XXXXXX)
PIDS=()
cleanup() {
  pkill -f "$WORK/destination.console" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir "$WORK/qmp" "$WORK/destination"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {  # PATTERN FILE SECONDS
  for _ in $(seq $((${3} * 10))); do grep -q "$1" "$2" 2>/dev/null && return 0; sleep 0.1; done
  die "no '$1' in $2 within $3 s"
}

echo "== building the guest (kernel from Debian's linux-image-cloud-amd64, busybox initramfs)"
GUEST=(--size "$SIZE_MIB" --fill "$FILL_MIB")
SOURCE=$("$PY" -m livemig.cli.qemu_guest "${GUEST[@]}" --memory "$WORK/guest.ram" \
  --qmp "$WORK/qmp/vm1" --serial "$WORK/source.console")
DESTINATION=$("$PY" -m livemig.cli.qemu_guest "${GUEST[@]}" --memory '{mem[mem]}' \
  --qmp '{qmp}' --serial "$WORK/destination.console" --incoming)

echo "== booting a ${SIZE_MIB} MiB guest under TCG"
eval "$SOURCE" >"$WORK/source.log" 2>&1 &
PIDS+=($!)
wait_for "livemig-guest: ready" "$WORK/source.console" 120
grep "livemig-guest" "$WORK/source.console" | tail -n 3 | sed 's/^/   source console: /'

RX=$(free_port)
TX=$(free_port)
"$LIVEMIG" receiver --listen "127.0.0.1:$RX" --memory-dir "$WORK/destination" --insecure >"$WORK/receiver.log" 2>&1 &
PIDS+=($!)
"$LIVEMIG" sender --listen "127.0.0.1:$TX" --qmp-dir "$WORK/qmp" --insecure >"$WORK/sender.log" 2>&1 &
PIDS+=($!)
wait_for "listening on" "$WORK/receiver.log" 60
wait_for "listening on" "$WORK/sender.log" 60

echo "== livemig migrate-vm: RAM by livemig, device state by QEMU (x-ignore-shared)"
"$LIVEMIG" migrate-vm --sender "127.0.0.1:$TX" --destination "127.0.0.1:$RX" --qmp-dir "$WORK/qmp" --guest vm1 \
  --connections "$CONNECTIONS" --destination-command "$DESTINATION" --destination-qmp "$WORK/destination.qmp" \
  --destination-log "$WORK/destination.log" --insecure

echo "== the guest at the destination (3 s of its console: the count goes on, the md5 is the one from boot)"
sleep 3
grep "livemig-guest" "$WORK/destination.console" | sed 's/^/   destination console: /'
BOOT=$(sed -n 's/.*livemig-guest: ready \([0-9a-f]*\).*/\1/p' "$WORK/source.console")
if grep -q "tick .* $BOOT" "$WORK/destination.console" && ! grep -q "livemig-guest: ready" "$WORK/destination.console"; then
  echo "== OK: the guest runs on at the destination with the memory it had (md5 $BOOT)"
else
  die "the destination guest did not go on with md5 $BOOT"
fi
