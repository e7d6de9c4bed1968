#!/usr/bin/env bash
# N concurrent sessions on ONE `icering serve --shards 1` (one UDP port), held with the
# clients' keepalives/consent checks running; server RSS per session and server CPU.
#
# Client agents have a dedicated socket each and one IP has ~64k UDP ports, so the
# script runs in a private network namespace (`ip netns`, root) with loopback aliases
# 127.0.0.2.. and spreads the client workers over IPS addresses (`--client-ips`). A
# process may hold 20,000 descriptors here, so clients run in workers of PER_WORKER; few
# big workers (6 for 100k) beat many small ones on this 2-core machine, because every
# worker's shard thread takes a scheduler share from the one server shard.
# Every 2 s during the run it samples the server's RSS, CPU and `GET /stats` (its own
# count of connected sessions) into $OUT/samples.tsv.
#
# Usage: loadtest/scripts/ice-serve-100k.sh [N=100000] [HOLD_S=60] [IPS=4] [PER_WORKER=17000] [CONCURRENCY=96]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
HOLD=${2:-60}
IPS=${3:-4}
PER=${4:-17000}
CONC=${5:-96}

if [[ -z "${ICERING_NETNS:-}" ]]; then
  [[ $(id -u) == 0 ]] || { echo "needs root (ip netns, ip addr add)" >&2; exit 1; }
  cargo build --release -q -p icering -p icering-loadtest --bins
  # The namespace gets its own UDP socket hash table (the machine's has 16,384 buckets,
  # shared by every namespace: with 100k sockets the kernel's udp4_lib_lookup2 was 15 %
  # of the server's CPU, walking long chains to deliver each answer on loopback).
  # The sysctl applies only to namespaces created while it is set: set, create, restore.
  NS=icering-load-$$
  KNOB=/proc/sys/net/ipv4/udp_child_hash_entries
  OLD=$(cat "$KNOB" 2>/dev/null || echo "")
  [[ -n "$OLD" ]] && echo 65536 >"$KNOB"
  ip netns add "$NS"
  [[ -n "$OLD" ]] && echo "$OLD" >"$KNOB"
  trap 'ip netns del "$NS"' EXIT
  ip netns exec "$NS" env ICERING_NETNS=1 "$0" "$N" "$HOLD" "$IPS" "$PER" "$CONC"
  exit $?
fi

BIN=target/release
OUT=${OUT:-$(mktemp -d)}
ADMIN=127.0.0.1:38471
ip link set lo up
CLIENT_IPS=127.0.0.1
for i in $(seq 2 "$IPS"); do
  ip addr add "127.0.0.$i/8" dev lo
  CLIENT_IPS="$CLIENT_IPS,127.0.0.$i"
done
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
echo "netns: lo = $(ip -4 -o addr show lo | awk '{print $4}' | tr '\n' ' ')," \
  "UDP hash buckets $(cat /proc/sys/net/ipv4/udp_hash_entries) (negative: the machine's, shared)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); output in $OUT"

# The server's shard on the first core, the client workers' shards on the others.
. loadtest/scripts/server-cores.sh
"$BIN/icering" serve --no-turn --shards 1 --cores "$FIRST" --listen 127.0.0.1:0 --ice-listen 127.0.0.1:0 \
  --admin "$ADMIN" >"$OUT/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do grep -q "session API on" "$OUT/serve.log" && break; sleep 0.1; done
RSS0=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
TICK=$(getconf CLK_TCK)

# Sampler: t_s, server RSS kB, server CPU % over the last interval, server /stats.
(
  t0=$(date +%s.%N); last=$(awk '{print $14 + $15}' /proc/$SPID/stat); lastt=$t0
  printf 't_s\trss_kB\tcpu_pct\tsessions\tconnected\n'
  while kill -0 "$SPID" 2>/dev/null; do
    now=$(date +%s.%N)
    ticks=$(awk '{print $14 + $15}' /proc/$SPID/stat)
    rss=$(awk '/VmRSS/{print $2}' /proc/$SPID/status)
    st=$(curl -s --max-time 1 "http://$ADMIN/stats" || true)
    sess=$(sed -n 's/.*"sessions":\([0-9]*\).*/\1/p' <<<"$st")
    conn=$(sed -n 's/.*"connected":\([0-9]*\).*/\1/p' <<<"$st")
    cpu=$(awk -v a="$ticks" -v b="$last" -v t="$now" -v u="$lastt" -v k="$TICK" \
      'BEGIN{ if (t > u) printf "%.1f", 100 * (a - b) / k / (t - u); else print 0 }')
    printf '%.0f\t%s\t%s\t%s\t%s\n' "$(awk -v t="$now" -v z="$t0" 'BEGIN{print t - z}')" \
      "$rss" "$cpu" "${sess:-?}" "${conn:-?}"
    last=$ticks; lastt=$now
    sleep 2
  done
) >"$OUT/samples.tsv" &

PROCS=$(( (N + PER - 1) / PER ))
set +e
"$BIN/icering-loadtest" ice serve --n "$N" --procs "$PROCS" --client-ips "$CLIENT_IPS" --cores "$REST" \
  --ports 1024:60999 --hold "$HOLD" --admin "$ADMIN" --server-pid "$SPID" \
  --concurrency "$CONC" --timeout 30 --json >"$OUT/serve.json" 2>"$OUT/loadtest.err"
RC=$?
set -e
sleep 2
kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
echo "loadtest exit $RC; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
tail -5 "$OUT/loadtest.err"
echo "server samples (t_s rss_kB cpu_pct sessions connected):"
cat "$OUT/samples.tsv"
python3 - "$OUT" "$RSS0" <<'PY'
import json, sys
out, rss0 = sys.argv[1], int(sys.argv[2])
try:
    [r] = json.load(open(f"{out}/serve.json"))
except Exception as e:
    sys.exit(f"no report: {e}")
rows = [l.split("\t") for l in open(f"{out}/samples.tsv").read().split("\n")[1:] if l]
peak = max((int(x[1]) for x in rows if x[1].isdigit()), default=0)
print(f"connected {r['connected']}/{r['requested']} in {r['setup_s']:.0f} s ({r['connections_per_s']:.0f}/s), "
      f"p50/p99/max {r['latency_ms_p50']:.0f}/{r['latency_ms_p99']:.0f}/{r['latency_ms_max']:.0f} ms, "
      f"failures: {', '.join(f'{v}x {k}' for k, v in r['failures'].items()) or 'none'}")
print(f"server RSS per session (setup, VmRSS after - before / connected): {r['server_rss_per_agent_b']:.0f} B")
if r['connected']:
    print(f"server RSS per session (peak during the run - at start): {(peak - rss0) * 1024 / r['connected']:.0f} B "
          f"(start {rss0} kB, peak {peak} kB)")
print(f"hold {r['hold_s']:.0f} s: server CPU {r['server_hold_cpu_pct']:.1f} % of a core, "
      f"load processes {r['hold_cpu_pct']:.1f} %, {r['alive_after_hold']} of {r['connected']} clients still connected")
PY
