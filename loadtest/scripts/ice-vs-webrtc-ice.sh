#!/usr/bin/env bash
# ICE connection setup, side by side in one run on this machine:
#  1. pairs: N agent pairs over loopback in K worker processes, icering (agents on its
#     shards through the public API, controlled side on the shard's shared port) and
#     webrtc-rs's webrtc-ice (controlled side on one UDPMuxDefault per worker), then a hold
#     of S seconds with keepalives/consent running; then again, both, with 1024 setups in
#     flight per worker instead of 256 (no hold), since at 256 an icering worker is
#     latency-bound, and with 128 (webrtc-ice's best in a scan of 64–512);
#  2. serve: M full icering agents (workers of 5,000) against ICE-lite echo sessions of `icering serve`
#     (one shard, one UDP port), sessions created over its HTTP API; server RSS and CPU.
# A process may hold at most 20,000 descriptors here, so the load is split over K workers.
# Usage: loadtest/scripts/ice-vs-webrtc-ice.sh [pairs N] [procs K] [hold S] [serve M]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
K=${2:-2}
HOLD=${3:-10}
M=${4:-10000}
OUT=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

cargo build --release -q -p icering -p icering-loadtest --bins
BIN=target/release
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

"$BIN/icering-loadtest" ice pairs --n "$N" --procs "$K" --hold "$HOLD" \
  --baseline webrtc-ice --json >"$OUT/pairs.json"
"$BIN/icering-loadtest" ice pairs --n "$N" --procs "$K" --concurrency 1024 \
  --baseline webrtc-ice --json >"$OUT/pairs1024.json"
# webrtc-ice is CPU-bound from ~64 in flight; its best rate was at 128 in one scan
# (64–512), so that setting runs too, for both.
"$BIN/icering-loadtest" ice pairs --n "$N" --procs "$K" --concurrency 128 \
  --baseline webrtc-ice --json >"$OUT/pairs128.json"

# The server's shard on the first core, the client workers' shards on the others (each
# would otherwise pin its shard to the first core of its mask, all on the same core).
. loadtest/scripts/server-cores.sh
"$BIN/icering" serve --no-turn --shards 1 --cores "$FIRST" --listen 127.0.0.1:0 --ice-listen 127.0.0.1:0 \
  --admin 127.0.0.1:38471 >"$OUT/serve.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do grep -q "session API on" "$OUT/serve.log" && break; sleep 0.1; done
# Workers of 5,000 client agents; dedicated ports from 1024-60999 (one loopback IP's
# ephemeral range alone holds ~28k sockets).
"$BIN/icering-loadtest" ice serve --n "$M" --procs "$(( (M + 4999) / 5000 ))" \
  --ports 1024:60999 --hold "$HOLD" --admin 127.0.0.1:38471 --server-pid "$SPID" \
  --concurrency 32 --cores "$REST" --json >"$OUT/serve.json"
kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
p256, p1024 = json.load(open(f"{out}/pairs.json")), json.load(open(f"{out}/pairs1024.json"))
p128 = json.load(open(f"{out}/pairs128.json"))
for r in p256: r["inflight"] = 256
for r in p1024: r["inflight"] = 1024
for r in p128: r["inflight"] = 128
rows = p128 + p256 + p1024 + json.load(open(f"{out}/serve.json"))
print("| implementation | load | in flight/worker | connected | conn/s | CPU us/conn | p50 ms | p90 ms | p99 ms | max ms "
      "| RSS B/agent | hold CPU % | hold RSS B/agent | alive after hold | server B/session | server hold CPU % | failures |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    srv = r.get("server_rss_per_agent_b")
    scpu = r.get("server_hold_cpu_pct")
    print(f"| {r['implementation']} | {r['mode']} ({r['sockets']}, {r['procs']} procs) | "
          f"{r.get('inflight', '')} | {r['connected']}/{r['requested']} | {r['connections_per_s']:.0f} | {r['cpu_us_per_connection']:.0f} | "
          f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p90']:.1f} | {r['latency_ms_p99']:.1f} | {r['latency_ms_max']:.1f} | "
          f"{r['rss_per_agent_b']:.0f} | {r['hold_cpu_pct']:.1f} | {r['hold_rss_per_agent_b']:.0f} | {r['alive_after_hold']} | "
          f"{'' if srv is None else f'{srv:.0f}'} | {'' if scpu is None else f'{scpu:.1f}'} | "
          f"{', '.join(f'{v}× {k}' for k, v in r['failures'].items()) or 'none'} |")
ratio = lambda x, y: x / y if y else float('nan')
a, b = p256
print(f"\nicering / webrtc-ice (pairs, 256 in flight): connections/s ×{ratio(a['connections_per_s'], b['connections_per_s']):.1f}, "
      f"CPU per connection ×{ratio(a['cpu_us_per_connection'], b['cpu_us_per_connection']):.2f}, "
      f"RSS per agent ×{ratio(a['rss_per_agent_b'], b['rss_per_agent_b']):.2f}, "
      f"hold CPU ×{ratio(a['hold_cpu_pct'], b['hold_cpu_pct']):.2f}")
a2, b2 = p1024
print(f"icering / webrtc-ice (pairs, 1024 in flight): connections/s ×{ratio(a2['connections_per_s'], b2['connections_per_s']):.1f}, "
      f"CPU per connection ×{ratio(a2['cpu_us_per_connection'], b2['cpu_us_per_connection']):.2f}")
# Each at its better setting; a setting where an implementation lost setups does not count
# for it (a timed-out setup's retries inflate or deflate its rate).
best = lambda rs: max((r for r in rs if r['failed'] == 0), key=lambda r: r['connections_per_s'], default=None)
a3, b3 = p128
ba, bb = best([a, a2, a3]), best([b, b2, b3])
if ba and bb:
    print(f"best without failures: icering {ba['connections_per_s']:.0f}/s ({ba['inflight']} in flight), "
          f"webrtc-ice {bb['connections_per_s']:.0f}/s ({bb['inflight']} in flight): ×{ratio(ba['connections_per_s'], bb['connections_per_s']):.1f}")
PY
