#!/usr/bin/env bash
# Two hosts for real, without Docker: network namespaces joined by a veth pair
# with a bandwidth cap (tc tbf), the receiver in one, the sender in the other.
# Migrates a generated guest image across the link and prints the result.
# Needs root and iproute2. Everything it creates is removed on exit. Plaintext
# (--insecure): the namespaces exist only on this machine; see README for TLS.
#
#   sudo scripts/netns-demo.sh                  # 256 MiB, half touched, 1 Gbit/s, 2 connections
#   RATE=500mbit SIZE_MIB=128 scripts/netns-demo.sh
#   LIVEMIG=/path/to/venv/bin/livemig JSON_OUT=result.json scripts/netns-demo.sh
#
# livemig is found as $LIVEMIG, else the project's own venv (.venv/bin/livemig, made by
# ./dev), else on PATH (root's PATH usually lacks it: `sudo` resets PATH).
set -euo pipefail

RATE=${RATE:-1gbit}
SIZE_MIB=${SIZE_MIB:-256}
TOUCHED=${TOUCHED:-0.5}
CONNECTIONS=${CONNECTIONS:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "netns-demo: $*" >&2
  exit 1
}

if [ -z "${LIVEMIG:-}" ]; then
  if [ -x "$ROOT/.venv/bin/livemig" ]; then
    LIVEMIG="$ROOT/.venv/bin/livemig"
  elif command -v livemig >/dev/null 2>&1; then
    LIVEMIG=$(command -v livemig)
  else
    die "livemig not found: run ./dev once (it makes $ROOT/.venv), or point LIVEMIG=/path/to/bin/livemig at it"
  fi
fi
$LIVEMIG --version >/dev/null 2>&1 || die "LIVEMIG=$LIVEMIG does not run livemig"
[ "$(id -u)" = 0 ] || die "needs root (network namespaces, veth, tc): sudo $0"
command -v ip >/dev/null 2>&1 || die "needs iproute2 (ip, tc): apt-get install iproute2"
JSON_OUT=${JSON_OUT:-}
SUBNET=${SUBNET:-10.213.77}   # private addresses that exist only inside these namespaces
SRC_NS="lm-src-$$"
DST_NS="lm-dst-$$"
SRC_IF="lms$$"
DST_IF="lmd$$"
SRC_IP="$SUBNET.1"
DST_IP="$SUBNET.2"
WORK=$(mktemp -d "$( [ -w /dev/shm ] && echo /dev/shm || echo /tmp )/livemig-netns.XXXXXX")
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$SRC_NS" 2>/dev/null || true
  ip netns del "$DST_NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Any failing step names itself instead of ending the script silently (set -e).
trap 'echo "netns-demo: step failed (exit $?): $BASH_COMMAND" >&2' ERR

wait_ready() {  # wait_ready LOGFILE ROLE
  for _ in $(seq 1 150); do
    grep -q "livemig $2 listening on" "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "livemig $2 did not start:" >&2
  cat "$1" >&2
  return 1
}

ip netns add "$SRC_NS"
ip netns add "$DST_NS"
ip link add "$SRC_IF" type veth peer name "$DST_IF"
ip link set "$SRC_IF" netns "$SRC_NS"
ip link set "$DST_IF" netns "$DST_NS"
for side in "$SRC_NS:$SRC_IF:$SRC_IP" "$DST_NS:$DST_IF:$DST_IP"; do
  IFS=: read -r ns dev ip <<<"$side"
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$ip/24" dev "$dev"
  ip -n "$ns" link set "$dev" up
  ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$RATE" burst 1mb latency 50ms
done
echo "link: $SRC_NS ($SRC_IP) <-> $DST_NS ($DST_IP), $RATE each way"

$LIVEMIG make-image --output "$WORK/guest.img" --size "${SIZE_MIB}M" --touched "$TOUCHED"
ip netns exec "$DST_NS" $LIVEMIG receiver --insecure --listen "$DST_IP:7868" --memory-dir "$WORK/destination" \
  >"$WORK/receiver.log" 2>&1 &
PIDS+=($!)
ip netns exec "$SRC_NS" $LIVEMIG sender --insecure --listen "127.0.0.1:7867" >"$WORK/sender.log" 2>&1 &
PIDS+=($!)
wait_ready "$WORK/receiver.log" receiver
wait_ready "$WORK/sender.log" sender

status=0
ip netns exec "$SRC_NS" $LIVEMIG send-migration --insecure --sender 127.0.0.1:7867 --destination "$DST_IP:7868" \
  --memory "$WORK/guest.img" --skip-zero-pages --connections "$CONNECTIONS" --verify --json \
  >"$WORK/result.json" || status=$?
[ -n "$JSON_OUT" ] && cp "$WORK/result.json" "$JSON_OUT"
python3 - "$WORK/result.json" "$RATE" <<'PY'
import json, sys
try:
    status = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    sys.exit("netns-demo: send-migration printed no status (see its error above)")
stats = status["stats"]
mib = 1 << 20
print(f"state {status['state']}, verified {stats.get('verified', False)}")
print(f"guest {int(stats['total_bytes']) / mib:.0f} MiB: skipped {int(stats['zero_bytes']) / mib:.1f} MiB, "
      f"transmitted {int(stats['transmitted_bytes']) / mib:.1f} MiB in {stats['duration_ms']} ms")
print(f"wire throughput {float(stats['throughput_bytes_per_second']) * 8 / 1e6:.0f} Mbit/s over a {sys.argv[2]} link")
PY
exit "$status"
