#!/usr/bin/env bash
# TURN relaying over UDP, TCP and TLS, icering against coturn, in alternating rounds on
# this machine (the VM's speed moves within minutes, so each ratio compares runs of the
# same round, and the table shows medians over the rounds):
#   coturn's turnserver, one relay thread (--relay-threads=1), UDP+TCP on one port, TLS on
#   another; icering serve --shards 1, UDP+TCP on one port, TLS (--tls-listen) on another.
# Both get the same certificate (ECDSA P-256, made here with openssl for 127.0.0.1).
# Load: `icering-loadtest turn --transport udp|tcp|tls`, ChannelData to the generator's own
# echo peer, one driver thread; over TCP and TLS each allocation has its own connection.
# Two load shapes: 16 allocations with 16 datagrams in flight each (a window per client:
# many frames for one connection per turn), and 256 allocations with 1 each (one frame per
# connection at a time). Server CPU from /proc/PID/stat, per round trip (two relayed
# datagrams, one each way).
# Usage: loadtest/scripts/turn-streams-vs-coturn.sh [seconds] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-3}
ROUNDS=${2:-3}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT; echo "raw results in $OUT" >&2

cargo build --release -q -p icering -p icering-loadtest --bins
BIN=target/release
wait_port() { for _ in $(seq 50); do ss -tln | grep -q ":$1 " && return 0; sleep 0.1; done; return 1; }
uptime >"$OUT/uptime-start"

loadtest/scripts/make-test-pki.sh "$OUT"

turnserver -n --listening-ip=127.0.0.1 --listening-port=34891 --tls-listening-port=34894 \
  --cert="$OUT/cert.pem" --pkey="$OUT/key.pem" --relay-ip=127.0.0.1 --min-port=42000 \
  --max-port=42999 --user=user:pass --realm=bench --lt-cred-mech --allow-loopback-peers \
  --relay-threads=1 --no-cli --no-dtls --log-file=stdout --simple-log >"$OUT/coturn.log" 2>&1 &
COTURN=$!
"$BIN/icering" serve --shards 1 --listen 127.0.0.1:34892 --tls-listen 127.0.0.1:34893 \
  --cert "$OUT/cert.pem" --pkey "$OUT/key.pem" --user user:pass --realm bench \
  --allow-loopback-peers --min-port 43000 --max-port 43999 >"$OUT/icering.log" 2>&1 &
ICERING=$!
for p in 34891 34892 34893 34894; do
  wait_port "$p" || { echo "port $p not listening"; cat "$OUT"/*.log; exit 1; }
done

for round in $(seq "$ROUNDS"); do
  for shape in "16 16" "256 1"; do
    set -- $shape
    for tr in udp tcp tls; do
      for srv in icering coturn; do
        if [ "$srv" = icering ]; then pid=$ICERING; port=34892; tls=34893
        else pid=$COTURN; port=34891; tls=34894; fi
        [ "$tr" = tls ] && port=$tls
        "$BIN/icering-loadtest" turn --target "127.0.0.1:$port" --transport "$tr" \
          --tls-ca "$OUT/ca.pem" --user user --pass pass --allocations "$1" --window "$2" \
          --duration "$SECS" --server-pid "$pid" --json \
          >"$OUT/$round-$1x$2-$tr-$srv.json"
      done
    done
  done
done
uptime >"$OUT/uptime-end"

python3 - "$OUT" "$SECS" "$ROUNDS" <<'PY'
import json, statistics, sys
out, secs, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
load = lambda f: open(f"{out}/{f}").read().split("load average:")[1].strip()
print(f"icering-loadtest turn, {secs} s per run, {rounds} alternating rounds, 1 driver thread; "
      f"load average: start {load('uptime-start')} / end {load('uptime-end')}\n")
print("| load | transport | icering round trips/s | coturn round trips/s | rate ratio "
      "| icering CPU ns/round trip | coturn CPU ns/round trip | CPU ratio |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
med = statistics.median
bad = []
for shape in ["16x16", "256x1"]:
    for tr in ["udp", "tcp", "tls"]:
        r = {s: [json.load(open(f"{out}/{k}-{shape}-{tr}-{s}.json")) for k in range(1, rounds + 1)]
             for s in ["icering", "coturn"]}
        for s, runs in r.items():
            for x in runs:
                for k in ["lost", "invalid", "late_or_duplicate", "send_failed",
                          "flows_without_answer"]:
                    if x.get(k):
                        bad.append(f"{s} {shape} {tr}: {k} {x[k]}")
        rate = {s: [x["answered_per_s"] for x in r[s]] for s in r}
        cpu = {s: [x["server_cpu_ns_per_answer"] for x in r[s]] for s in r}
        rr = med([a / b for a, b in zip(rate["icering"], rate["coturn"])])
        cr = med([a / b for a, b in zip(cpu["icering"], cpu["coturn"])])
        allocs, window = shape.split("x")
        print(f"| {allocs} allocations × {window} in flight | {tr} | {med(rate['icering']):,.0f} | "
              f"{med(rate['coturn']):,.0f} | ×{rr:.2f} | {med(cpu['icering']):,.0f} | "
              f"{med(cpu['coturn']):,.0f} | ×{cr:.2f} |")
print("\n" + ("; ".join(bad) if bad else
              "no loss, invalid, late or duplicate datagrams, send failures or idle allocations"))
PY
