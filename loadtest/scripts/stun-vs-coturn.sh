#!/usr/bin/env bash
# STUN Binding load, side by side in one run on this machine:
#   (a) raw limit: a plain recvmmsg/sendmmsg UDP echo (examples/udp_echo);
#   (b) coturn's turnserver, one relay thread;
#   (c) icering serve --shards 1, io_uring and portable backends.
# Same load for each (icering-loadtest stun, windowed), server CPU time from /proc/PID/stat.
# Usage: loadtest/scripts/stun-vs-coturn.sh [seconds] [window] [threads]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
WINDOW=${2:-256}
THREADS=${3:-1}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT; echo "raw results in $OUT" >&2

cargo build --release -q -p icering -p icering-loadtest --bins --examples
BIN=target/release
LOAD() { "$BIN/icering-loadtest" stun --target "$1" --duration "$SECS" --window "$WINDOW" \
           --threads "$THREADS" --server-pid "$2" --json $EXTRA; }
wait_port() { for _ in $(seq 50); do ss -uln | grep -q ":$1 " && return 0; sleep 0.1; done; return 1; }

run() { # name, port, command...
  local name=$1 port=$2; shift 2
  EXTRA=""; [ "$name" = echo ] && EXTRA="--accept-echo"
  "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_port "$port" || { echo "$name did not start"; cat "$OUT/$name.log"; exit 1; }
  sleep 0.3
  # Answer size for a minimal 20-byte Binding request (amplification factor).
  python3 -c 'import socket,sys,os
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(2)
s.sendto(bytes.fromhex("000100002112a442")+os.urandom(12),("127.0.0.1",int(sys.argv[1])))
print(len(s.recv(2048)))' "$port" >"$OUT/$name.amp"
  LOAD "127.0.0.1:$port" "$pid" >"$OUT/$name.json"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

run echo 34790 "$BIN/examples/udp_echo" 127.0.0.1:34790
run coturn 34791 turnserver -n --listening-ip=127.0.0.1 --listening-port=34791 \
  --relay-threads=1 --no-tls --no-dtls --no-cli --log-file=stdout --simple-log \
  --realm=bench --no-auth --fingerprint
run icering-uring 34792 "$BIN/icering" serve --shards 1 --io uring --listen 127.0.0.1:34792
run icering-portable 34793 "$BIN/icering" serve --shards 1 --io portable --listen 127.0.0.1:34793

python3 - "$OUT" "$SECS" "$WINDOW" "$THREADS" <<'PY'
import json, sys, socket, os
out, secs, window, threads = sys.argv[1:]
r = {n: json.load(open(f"{out}/{n}.json")) for n in ["echo", "coturn", "icering-uring", "icering-portable"]}
echo, cot = r["echo"], r["coturn"]
print(f"load: icering-loadtest stun, {secs} s, window {window}/thread, {threads} thread(s)\n")
print("| server | answered req/s | vs raw echo | server CPU ns/answer | vs coturn | p50 us | p99 us | loss % |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for n, x in r.items():
    cpu = x["server_cpu_ns_per_answer"]
    print(f"| {n} | {x['answered_per_s']:.0f} | {x['answered_per_s']/echo['answered_per_s']:.2f} | "
          f"{cpu:.0f} | {cpu/cot['server_cpu_ns_per_answer']:.2f} | {x['latency_us_p50']} | "
          f"{x['latency_us_p99']} | {x['loss_pct']:.3f} |")
print("\nbytes out / bytes in for a minimal 20-byte Binding request:")
for n in ["coturn", "icering-uring"]:
    b = int(open(f"{out}/{n}.amp").read())
    print(f"- {n}: {b} bytes = {b/20:.1f}x")
PY
