#!/bin/bash
# User-space instructions per datagram handled by `icering serve` (one shard, portable
# backend) relaying ChannelData for 16 allocations (window 4, 10 s) under callgrind, in
# either relay socket layout, so the two can be compared on the same binary.
# Usage: loadtest/scripts/turn-relay-callgrind.sh per-allocation|shared-port [OUT_DIR]
#        (after cargo build --release -p icering -p icering-loadtest --bins)
set -u
MODE=$1
OUT=${2:-$(mktemp -d)}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
NO_COLOR=1 valgrind --tool=callgrind --callgrind-out-file="$OUT/cg.out" "$BIN/icering" serve \
  --listen 127.0.0.1:35900 --shards 1 --io portable --no-tcp --user user:pass \
  --allow-loopback-peers --relay-socket "$MODE" --relay-ip 127.0.0.2 --relay-ip 127.0.0.3 \
  --min-port 30000 --max-port 30999 >"$OUT/serve.log" 2>&1 &
SPID=$!
sleep 6
"$BIN/icering-loadtest" turn --target 127.0.0.1:35900 --allocations 16 --window 4 \
  --duration 10 --timeout-ms 3000 --io portable >"$OUT/lt.log" 2>&1
sleep 1
kill -INT $SPID
wait $SPID
total=$(callgrind_annotate "$OUT/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
received=$(sed -n 's/.* received=\([0-9]*\).*/\1/p' "$OUT/serve.log")
echo "$MODE: $total instructions, $received datagrams handled," \
  "$(( total / received )) per datagram (start-up included)"
grep -E "^answered|^lost" "$OUT/lt.log"
