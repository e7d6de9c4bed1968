#!/usr/bin/env bash
# N live TURN allocations (default 100,000) on ONE `icering serve` with shared-port relay
# sockets (`--relay-socket shared-port`): RIPS relay IPs share each relay port socket, so
# N allocations need N / RIPS server descriptors, below this container's hard open file
# limit (20,000; root lacks CAP_SYS_RESOURCE to raise it).
#
# The clients need one socket per allocation too, so PROCS `icering-loadtest turn`
# processes (each below its own 20,000 descriptors) hold N / PROCS allocations each, each
# process on its own client IP (127.0.2.k: every IP has its own ephemeral ports). The relay
# port range (10000-29999) is disjoint from the clients' ephemeral ports (32768-60999):
# a wildcard relay socket cannot bind a port some client socket holds on any address.
#
# Runs in a private network namespace (root; `ip netns`) with its own UDP socket hash
# table (see ice-serve-100k.sh). Every process sets its allocations up (Allocate 401 →
# signed Allocate → ChannelBind to its echo peer), then holds them; once the server's own
# counter (`--stats-interval 1` log lines) shows all N live, the script samples the
# server's RSS, descriptors and port sockets, then releases the clients, which relay
# ChannelData for LOAD_S seconds through every EVERY-th allocation (window 1) and delete
# them all (Refresh 0, at most 1,024 outstanding per client).
#
# Usage: [EVERY=10] [LOAD_S=5] loadtest/scripts/turn-shared-100k.sh [N=100000] [PROCS=8] [RIPS=8] [SHARDS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
PROCS=${2:-8}
RIPS=${3:-8}
SHARDS=${4:-2}
# Every EVERY-th allocation carries data for LOAD_S seconds after the hold (a sample: all
# 100k at window 1 at once is one burst beyond the server's socket buffers).
EVERY=${EVERY:-10}
LOAD_S=${LOAD_S:-5}

if [[ -z "${ICERING_NETNS:-}" ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (ip netns)" >&2; exit 1; }
  [[ -n "${NO_BUILD:-}" ]] || cargo build --release -q -p icering -p icering-loadtest --bins
  NS=icering-turn-$$
  KNOB=/proc/sys/net/ipv4/udp_child_hash_entries
  OLD=$(cat "$KNOB" 2>/dev/null || echo "")
  [[ -n "$OLD" ]] && echo 65536 >"$KNOB"
  ip netns add "$NS"
  [[ -n "$OLD" ]] && echo "$OLD" >"$KNOB"
  trap 'ip netns del "$NS"' EXIT
  ip netns exec "$NS" env ICERING_NETNS=1 EVERY="$EVERY" LOAD_S="$LOAD_S" \
    "$0" "$N" "$PROCS" "$RIPS" "$SHARDS"
  exit $?
fi

BIN=target/release
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
ip link set lo up
echo "netns: UDP hash buckets $(cat /proc/sys/net/ipv4/udp_hash_entries) (negative: shared)," \
  "ephemeral ports $(cat /proc/sys/net/ipv4/ip_local_port_range | tr '\t' -)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT"
RELAY_ARGS=()
for i in $(seq 1 "$RIPS"); do RELAY_ARGS+=(--relay-ip "127.0.1.$i"); done

NO_COLOR=1 "$BIN/icering" serve --listen 127.0.0.1:3478 --shards "$SHARDS" --io uring --no-tcp \
  --user user:pass --allow-loopback-peers --relay-socket shared-port "${RELAY_ARGS[@]}" \
  --min-port 10000 --max-port 29999 --stats-interval 1 >"$OUT/serve.log" 2>&1 &
SPID=$!
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "TURN relay on" "$OUT/serve.log" && break; sleep 0.1; done
sleep 1
rss() { awk '/VmRSS/{print $2}' "/proc/$SPID/status"; }
fds() { ls "/proc/$SPID/fd" | wc -l; }
last() { grep ' stats ' "$OUT/serve.log" | tail -1; }
field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<"$(last)"; }
RSS0=$(rss); FD0=$(fds)
echo "server pid $SPID: rss ${RSS0} kB, fds ${FD0} at start"
grep -m1 "open file limit" "$OUT/serve.log" | sed 's/^.*INFO //; s/^.*WARN //'

PER=$(( (N + PROCS - 1) / PROCS ))
T0=$(date +%s.%N)
PIDS=()
for k in $(seq 1 "$PROCS"); do
  n=$PER; (( k * PER > N )) && n=$(( N - (k - 1) * PER ))
  "$BIN/icering-loadtest" turn --target 127.0.0.1:3478 --user user --pass pass \
    --allocations "$n" --window 1 --duration "$LOAD_S" --data-every "$EVERY" --timeout-ms 2000 --io uring \
    --client-ips "127.0.2.$k" --hold-file "$OUT/go" --server-pid "$SPID" \
    >"$OUT/lt$k.log" 2>&1 &
  PIDS+=($!)
done
# Wait for the server's own count of live allocations to reach N (or the clients to stop).
PEAK=0
while :; do
  sleep 1
  live=$(field allocations); live=${live:-0}
  (( live > PEAK )) && PEAK=$live
  printf '\r%s s: %s live allocations, %s port sockets, rss %s kB   ' \
    "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.0f", a - b}')" \
    "$live" "$(field relay_port_sockets)" "$(rss)"
  (( live >= N )) && break
  # A client that exits before the hold failed its setup (its log says why): stop waiting.
  alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  (( alive == PROCS )) || { echo; echo "a client exited during setup:"; grep -h "icering-loadtest:" "$OUT"/lt*.log; break; }
  # A client that failed its setup exits; the others hold. Stop waiting after 20 min.
  [[ $(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print (a - b > 1200)}') == 1 ]] && break
done
echo
SETUP=$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{printf "%.0f", a - b}')
sleep 2
RSS1=$(rss); FD1=$(fds)
echo "all set up in ~${SETUP} s; server now: $(last | sed 's/^.*stats //')"
echo "server rss ${RSS1} kB (+$((RSS1 - RSS0)) kB), fds ${FD1} (+$((FD1 - FD0)))"
LIVE=$(field allocations)
if (( LIVE > 0 )); then
  echo "per live allocation: $(( (RSS1 - RSS0) * 1024 / LIVE )) B RSS," \
    "$(awk -v f=$((FD1 - FD0)) -v l="$LIVE" 'BEGIN{printf "%.3f", f / l}') descriptors"
fi
touch "$OUT/go"
# Kernel drops per socket (ss skmem `d`), near the end of the load phase: where datagrams
# are lost when the socket buffers overflow.
( sleep "$(awk -v l="$LOAD_S" 'BEGIN{print (l > 1 ? l - 1 : l)}')"
  ss -uanmH | awk '
    /^UNCONN/ { n = split($4, a, ":"); port = a[n]; ip = substr($4, 1, length($4) - length(port) - 1) }
    /skmem/ { match($0, /d[0-9]+\)/); d = substr($0, RSTART + 1, RLENGTH - 2) + 0
      if (port == 3478) k = "server listen sockets"
      else if (port >= 10000 && port <= 29999) k = "server relay port sockets"
      else if (ip ~ /^127\.0\.2\./) k = "client sockets"
      else k = "echo peers and others"
      drops[k] += d; socks[k]++ }
    END { for (k in drops) printf "  %-26s %7d sockets, %9d datagrams dropped\n", k, socks[k], drops[k] }'
) >"$OUT/drops.txt" 2>&1 &
RC=0
for p in "${PIDS[@]}"; do wait "$p" || RC=1; done
sleep 2
echo "after the load and Refresh 0: $(last | sed 's/^.*stats //')"
kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
for k in $(seq 1 "$PROCS"); do
  echo "--- client $k"
  grep -E "setup done|icering-loadtest:|^sent|^answered|^lost|flows idle|not deleted|^relayed " "$OUT/lt$k.log" || tail -3 "$OUT/lt$k.log"
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); clients exit status ${RC}"
echo "socket drops near the end of the load (ss skmem d):"
cat "$OUT/drops.txt"
echo "UDP in this namespace (kernel drops: RcvbufErrors, SndbufErrors):"
grep '^Udp:' /proc/net/snmp | tr -s ' ' | column -t 2>/dev/null || grep '^Udp:' /proc/net/snmp
grep -E "stopped" "$OUT/serve.log" | sed 's/^.*INFO //'
