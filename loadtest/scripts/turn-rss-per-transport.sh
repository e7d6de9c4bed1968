#!/usr/bin/env bash
# Server memory per allocation over UDP, TCP and TLS: one `icering serve --shards 1`
# (UDP+TCP on one port, TLS on another), then for each transport `icering-loadtest turn`
# with N allocations, one datagram in flight each, for 4 s; the server's VmRSS is sampled
# every 0.2 s, and (peak − RSS before the run) / N is printed. Over TCP and TLS each
# allocation has its own connection, so the difference to UDP is what a connection (and
# its TLS session) holds in the process; socket buffers are kernel memory, not RSS.
# Usage: loadtest/scripts/turn-rss-per-transport.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-4000}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT; echo "raw results in $OUT" >&2
cargo build --release -q -p icering -p icering-loadtest --bins
loadtest/scripts/make-test-pki.sh "$OUT"
BIN=target/release
"$BIN/icering" serve --shards 1 --listen 127.0.0.1:35892 --tls-listen 127.0.0.1:35893 \
  --cert "$OUT/cert.pem" --pkey "$OUT/key.pem" --user user:pass --realm bench \
  --allow-loopback-peers --min-port 20000 --max-port 29999 >"$OUT/serve.log" 2>&1 &
SERVE=$!
sleep 1
echo "| transport | RSS before | peak | bytes per allocation | round trips answered |"
echo "|---|---:|---:|---:|---:|"
for tr in udp tcp tls; do
  rss() { awk '/VmRSS/{print $2}' "/proc/$SERVE/status"; }
  base=$(rss)
  port=35892; [ "$tr" = tls ] && port=35893
  "$BIN/icering-loadtest" turn --target "127.0.0.1:$port" --transport "$tr" \
    --tls-ca "$OUT/ca.pem" --allocations "$N" --window 1 --duration 4 --json \
    >"$OUT/$tr.json" 2>"$OUT/$tr.err" &
  load=$!
  peak=0
  while kill -0 "$load" 2>/dev/null; do
    r=$(rss); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2
  done
  wait "$load"
  answered=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['answered'])" "$OUT/$tr.json")
  echo "| $tr | ${base} kB | ${peak} kB | $(( (peak - base) * 1024 / N )) | $answered |"
  sleep 2
done
