#!/usr/bin/env bash
# TURN relaying load, side by side in one run on this machine: coturn's turnserver and
# icering serve (2 shards), same credentials, same load (icering-loadtest turn: N
# allocations, a channel each to a local echo peer, a window of datagrams in flight).
# Server CPU time from /proc/PID/stat. On a small machine the load generator and its echo
# peer share the cores with the server: compare CPU ns per round trip, not only rates.
# Usage: loadtest/scripts/turn-vs-coturn.sh [seconds] [allocations] [window]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
ALLOCS=${2:-16}
WINDOW=${3:-8}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

cargo build --release -q -p icering -p icering-loadtest --bins
BIN=target/release
wait_port() { for _ in $(seq 50); do ss -uln | grep -q ":$1 " && return 0; sleep 0.1; done; return 1; }

run() { # name, port, command...
  local name=$1 port=$2; shift 2
  "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_port "$port" || { echo "$name did not start"; cat "$OUT/$name.log"; exit 1; }
  sleep 0.5
  for mode in channel indications; do
    extra=""; [ "$mode" = indications ] && extra="--indications"
    "$BIN/icering-loadtest" turn --target "127.0.0.1:$port" --user user --pass pass \
      --allocations "$ALLOCS" --window "$WINDOW" --duration "$SECS" --server-pid "$pid" \
      --json $extra >"$OUT/$name-$mode.json"
  done
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

run coturn 34891 turnserver -n --listening-ip=127.0.0.1 --listening-port=34891 \
  --relay-ip=127.0.0.1 --min-port=42000 --max-port=42999 --user=user:pass --realm=bench \
  --lt-cred-mech --allow-loopback-peers --no-cli --no-tls --no-dtls --no-tcp \
  --log-file=stdout --simple-log
run icering 34892 "$BIN/icering" serve --shards 2 --listen 127.0.0.1:34892 \
  --user user:pass --realm bench --allow-loopback-peers --min-port 43000 --max-port 43999

python3 - "$OUT" "$SECS" "$ALLOCS" "$WINDOW" <<'PY'
import json, sys
out, secs, allocs, window = sys.argv[1:]
print(f"load: icering-loadtest turn, {secs} s, {allocs} allocations, window {window}\n")
print("| server | mode | round trips/s | server CPU ns/round trip | p50 us | p99 us | loss % |")
print("|---|---|---:|---:|---:|---:|---:|")
for n in ["coturn", "icering"]:
    for m in ["channel", "indications"]:
        x = json.load(open(f"{out}/{n}-{m}.json"))
        print(f"| {n} | {m} | {x['answered_per_s']:.0f} | {x['server_cpu_ns_per_answer']:.0f} | "
              f"{x['latency_us_p50']} | {x['latency_us_p99']} | {x['loss_pct']:.3f} |")
PY
