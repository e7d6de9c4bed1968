#!/usr/bin/env bash
# CPU per ICE pair setup against its kernel + io floor, alternating R times in one run:
#   icering-loadtest ice pairs --n N --procs 1 --concurrency C   (icering, mux-dedicated)
#   icering-loadtest udp-floor --n N --concurrency C             (same sockets and datagrams, no ICE)
# Prints each run and the medians; the difference is what ICE, the shard and the
# application API cost per connection. Run in a fresh network namespace:
#   unshare -n sh -c 'ip link set lo up && loadtest/scripts/ice-vs-udp-floor.sh'
# Usage: loadtest/scripts/ice-vs-udp-floor.sh [N] [C] [R]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-18000}
C=${2:-1024}
R=${3:-5}
cargo build --release -q -p icering -p icering-loadtest --bins
BIN=target/release/icering-loadtest
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
ICE=() FLOOR=()
for i in $(seq "$R"); do
  ice=$("$BIN" ice pairs --n "$N" --procs 1 --concurrency "$C" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)[0]; assert r["failed"]==0, r; print("%.1f %.0f" % (r["cpu_us_per_connection"], r["connections_per_s"]))')
  floor=$("$BIN" udp-floor --n "$N" --concurrency "$C" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.1f %.0f" % (r["cpu_us_per_pair"], r["pairs_per_s"]))')
  echo "run $i: ice pairs ${ice% *} us/conn (${ice#* }/s), udp floor ${floor% *} us/pair (${floor#* }/s)"
  ICE+=("${ice% *}") FLOOR+=("${floor% *}")
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "${ICE[*]}" "${FLOOR[*]}" <<'PY'
import statistics, sys
ice = [float(x) for x in sys.argv[1].split()]
floor = [float(x) for x in sys.argv[2].split()]
mi, mf = statistics.median(ice), statistics.median(floor)
print(f"median CPU per pair: ice pairs {mi:.1f} us, udp floor {mf:.1f} us; "
      f"above the floor {mi - mf:.1f} us; floor / ice = {mf / mi:.2f}")
print(f"connections per core-second: ice pairs {1e6 / mi:.0f}, udp floor {1e6 / mf:.0f}")
PY
