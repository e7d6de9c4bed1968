#!/usr/bin/env bash
# Connection setup rate, icering against webrtc-ice, each at its own best setting without
# failures (icering: C_ICE in flight per worker, where it uses both cores; webrtc-ice:
# C_WEB, its best in a scan of 64–512), in R rounds. Each round runs both back to back in
# one invocation, so the per-round ratio compares the same phase of this VM (whose speed
# moves by up to 2× within minutes); prints each round and the medians. Run in a fresh
# network namespace:
#   unshare -n sh -c 'ip link set lo up && loadtest/scripts/ice-vs-webrtc-ice-rounds.sh'
# Usage: loadtest/scripts/ice-vs-webrtc-ice-rounds.sh [N] [K] [R] [C_ICE] [C_WEB]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
K=${2:-2}
R=${3:-5}
C_ICE=${4:-1024}
C_WEB=${5:-128}
cargo build --release -q -p icering -p icering-loadtest --bins
BIN=target/release/icering-loadtest
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ROWS=()
for i in $(seq "$R"); do
  row=$("$BIN" ice pairs --n "$N" --procs "$K" --concurrency "$C_ICE" \
    --baseline webrtc-ice --baseline-concurrency "$C_WEB" --json |
    python3 -c 'import json,sys
a, b = json.load(sys.stdin)
print("%d %d %.0f %.0f %.0f %.0f %.0f %.0f" % (a["failed"], b["failed"], a["connections_per_s"], b["connections_per_s"],
      a["cpu_us_per_connection"], b["cpu_us_per_connection"], a["rss_per_agent_b"], b["rss_per_agent_b"]))')
  echo "round $i: failed icering/webrtc-ice, conn/s, CPU us/conn, RSS B/agent: $row"
  ROWS+=("$row")
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "${ROWS[@]}" <<'PY'
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1:]]
ok = [r for r in rows if r[0] == 0 and r[1] == 0]
print(f"{len(ok)} of {len(rows)} rounds without failures on either side")
if ok:
    med = lambda i: statistics.median(r[i] for r in ok)
    rate = statistics.median(r[2] / r[3] for r in ok)
    cpu = statistics.median(r[4] / r[5] for r in ok)
    rss = statistics.median(r[6] / r[7] for r in ok)
    print(f"median conn/s: icering {med(2):.0f}, webrtc-ice {med(3):.0f}; "
          f"median of the rounds' ratios: conn/s x{rate:.1f}, CPU per connection x{cpu:.2f}, RSS per agent x{rss:.3f}")
PY
