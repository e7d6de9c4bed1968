#!/bin/bash
# Server RSS per live TURN allocation: icering serve (2 shards, two relay IPs) and
# icering-loadtest turn holding ALLOCS allocations (one client socket each, so ALLOCS must
# stay below the client's open file limit). Peak RSS while they live minus RSS at start.
# Per-allocation relay sockets, so the server's open file limit caps ALLOCS too; for 100k
# live allocations (shared-port relay sockets, several client processes) see
# turn-shared-100k.sh.
# Usage: loadtest/scripts/turn-allocations-rss.sh ALLOCS  (after cargo build --release --bins)
set -u
N=$1
BIN=${BIN:-target/release}
RUST_LOG=info $BIN/icering serve --listen 127.0.0.1:35478 --shards 2 --io uring --user user:pass \
  --relay-ip 127.0.0.2 --relay-ip 127.0.0.3 --min-port 20000 --max-port 60000 --allow-loopback-peers \
  > ${TMPDIR:-/tmp}/turn-rss-serve.log 2>&1 &
SPID=$!
sleep 1
rss() { awk '/VmRSS/{print $2}' /proc/$SPID/status; }
B=$(rss)
echo "server pid $SPID rss_before_kB=$B"
( while kill -0 $SPID 2>/dev/null; do rss; sleep 0.2; done ) > ${TMPDIR:-/tmp}/turn-rss-rss_samples &
$BIN/icering-loadtest turn --target 127.0.0.1:35478 --user user --pass pass --allocations $N \
  --window 1 --duration 2 --threads 2 --server-pid $SPID > ${TMPDIR:-/tmp}/turn-rss-lt.log 2>&1
echo "loadtest exit $?"
A=$(sort -n ${TMPDIR:-/tmp}/turn-rss-rss_samples | tail -1)
echo "rss_max_kB=$A per_alloc_B=$(( (A - B) * 1024 / N ))"
fds=$(ls /proc/$SPID/fd | wc -l); echo "server fds now=$fds"
kill -TERM $SPID; wait $SPID
grep -iE "open file limit|stopped|relay" ${TMPDIR:-/tmp}/turn-rss-serve.log | head -5
tail -15 ${TMPDIR:-/tmp}/turn-rss-lt.log
