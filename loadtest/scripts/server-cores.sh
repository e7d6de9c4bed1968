# Sourced by the serve scripts: FIRST is the first core of this process's affinity mask
# (for the server's one shard), REST the others, comma-separated (for the load's worker
# shards; the first core again on a one-core machine). Without it every process would pin
# its one shard to the same first core.
CORES=$(python3 -c 'import os; print(",".join(map(str, sorted(os.sched_getaffinity(0)))))')
FIRST=${CORES%%,*}
REST=${CORES#*,}
if [ "$REST" = "$CORES" ]; then REST=$FIRST; fi
