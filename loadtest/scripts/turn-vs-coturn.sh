#!/usr/bin/env bash
# TURN relaying load, side by side in one run on this machine, same load shape for each:
#   (a) raw limit: a plain recvmmsg/sendmmsg UDP echo (examples/udp_echo, one thread), loaded
#       by `icering-loadtest turn --raw-echo`: the same datagrams (ChannelData or Send
#       indications), the same number of flows (one socket each) and window, no TURN;
#   (b) coturn's turnserver with one relay thread (--relay-threads=1);
#   (c) icering serve --shards 1 (io backend auto: io_uring when the kernel allows it).
# TURN load: `icering-loadtest turn`, N allocations with a channel (or a permission, for
# Send/Data indications) to the load generator's own echo peer, a window of datagrams in
# flight per allocation, one driver thread with batched io for all client sockets and the
# peer. Server CPU time from /proc/PID/stat.
#
# A TURN round trip is two relayed datagrams (client → relay → peer, peer → relay → client),
# each one datagram into and one out of the server, as an echoed datagram is: "relayed
# datagrams/s" = 2 × round trips/s is compared with the echo's datagrams/s, and server CPU
# is per relayed datagram. "server CPU %" says whether the server was saturated: well below
# 100 % means the rate is bounded by the window/latency or the load generator (its own CPU
# is "load gen CPU %", echo peer included), not the server.
# Usage: loadtest/scripts/turn-vs-coturn.sh [seconds] [allocations] [window] [size]
# NO_GSO=1: the generator sends datagram by datagram (`--no-gso`), as clients without UDP
# GSO do; by default it sends GSO bursts, which loopback delivers to a GRO socket merged.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-5}
ALLOCS=${2:-16}
WINDOW=${3:-16}
SIZE=${4:-100}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT; echo "raw results in $OUT" >&2

cargo build --release -q -p icering -p icering-loadtest --bins
cargo build --release -q -p icering --example udp_echo
BIN=target/release
wait_port() { for _ in $(seq 50); do ss -uln | grep -q ":$1 " && return 0; sleep 0.1; done; return 1; }
uptime >"$OUT/uptime-start"

run() { # name, port, command...
  local name=$1 port=$2; shift 2
  local raw=""; [ "$name" = echo ] && raw="--raw-echo"
  "$@" >"$OUT/$name.log" 2>&1 &
  local pid=$!
  wait_port "$port" || { echo "$name did not start"; cat "$OUT/$name.log"; exit 1; }
  sleep 0.5
  for mode in channel indications; do
    extra=""; [ "$mode" = indications ] && extra="--indications"
    "$BIN/icering-loadtest" turn --target "127.0.0.1:$port" --user user --pass pass \
      --allocations "$ALLOCS" --window "$WINDOW" --size "$SIZE" --duration "$SECS" \
      --server-pid "$pid" --json $raw $extra ${NO_GSO:+--no-gso} >"$OUT/$name-$mode.json"
  done
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

run echo 34890 "$BIN/examples/udp_echo" 127.0.0.1:34890
run coturn 34891 turnserver -n --listening-ip=127.0.0.1 --listening-port=34891 \
  --relay-ip=127.0.0.1 --min-port=42000 --max-port=42999 --user=user:pass --realm=bench \
  --lt-cred-mech --allow-loopback-peers --relay-threads=1 --no-cli --no-tls --no-dtls \
  --no-tcp --log-file=stdout --simple-log
run icering 34892 "$BIN/icering" serve --shards 1 --listen 127.0.0.1:34892 \
  --user user:pass --realm bench --allow-loopback-peers --min-port 43000 --max-port 43999
uptime >"$OUT/uptime-end"

python3 - "$OUT" "$SECS" "$ALLOCS" "$WINDOW" "$SIZE" <<'PY'
import json, sys
out, secs, allocs, window, size = sys.argv[1:]
print(f"load: icering-loadtest turn, {secs} s, {allocs} allocations (flows), window {window}, "
      f"{size} B payload, 1 driver thread")
print("load average: start", open(f"{out}/uptime-start").read().split("load average:")[1].strip(),
      "/ end", open(f"{out}/uptime-end").read().split("load average:")[1].strip(), "\n")
r = {(n, m): json.load(open(f"{out}/{n}-{m}.json"))
     for n in ["echo", "coturn", "icering"] for m in ["channel", "indications"]}
def per_s(n, m):  # datagrams through the server per second (in once, out once)
    x = r[(n, m)]
    return x["answered_per_s"] * (1 if n == "echo" else 2)
def cpu_ns(n, m):
    x = r[(n, m)]
    return x["server_cpu_s"] * 1e9 / max(1, x["answered"] * (1 if n == "echo" else 2))
print("| server | mode | round trips/s | relayed (echoed) datagrams/s | vs raw echo "
      "| server CPU ns/datagram | vs coturn | server CPU % | load gen CPU % | p50 us | p99 us "
      "| loss % | invalid |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in ["echo", "coturn", "icering"]:
    for m in ["channel", "indications"]:
        x = r[(n, m)]
        busy = 100 * x["server_cpu_s"] / x["duration_s"]
        gen = 100 * x["load_cpu_s"] / x["duration_s"]
        print(f"| {n} | {m} | {x['answered_per_s']:.0f} | {per_s(n, m):.0f} | "
              f"{per_s(n, m) / per_s('echo', m):.2f} | {cpu_ns(n, m):.0f} | "
              f"{cpu_ns(n, m) / cpu_ns('coturn', m):.2f} | {busy:.0f} | {gen:.0f} | {x['latency_us_p50']} | "
              f"{x['latency_us_p99']} | {x['loss_pct']:.3f} | {x['invalid']} |")
anomalies = [f"{n} {m}: {k} {r[(n, m)][k]}" for (n, m) in r
             for k in ["late_or_duplicate", "send_failed", "flows_without_answer",
                       "peer_echo_dropped", "not_deleted", "stray"]
             if r[(n, m)].get(k)]
print("\n" + ("; ".join(anomalies) if anomalies else
              "no late/duplicate, send failures, idle allocations, echo drops, undeleted "
              "allocations or stray datagrams"))
PY
