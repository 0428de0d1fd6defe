#!/bin/sh
# The full 36-month backfill (`engine run`) from the demo's production-shaped backlog and from
# an empty calculations table, at several --jobs, with the dashboard on (a pseudo-terminal via
# `script`). Wall time and peak memory come from /usr/bin/time -v; the wall time includes
# starting Python and uv (≈1.5 s).
#
#   ENGINE_DATA_DIR=/tmp/bench sh benchmarks/backfill.sh [JOBS...]      (default: 1 2 3 4)
#
# Needs the demo database once: ENGINE_DATA_DIR=/tmp/bench uv run engine demo
set -eu
jobs_list=${*:-1 2 3 4}
log=$(mktemp)
printf '| start | --jobs | engine run wall (s) | backfill (s) | rows inserted | peak RSS (MB) |\n'
printf '|---|---|---|---|---|---|\n'
for start in backlog empty; do
    for jobs in $jobs_list; do
        flag=""; [ "$start" = empty ] && flag="--empty"
        uv run python benchmarks/restore_backlog.py $flag 2>/dev/null
        script -qec "/usr/bin/time -v uv run engine run --jobs $jobs" "$log" >/dev/null
        wall=$(grep -a 'Elapsed (wall clock)' "$log" | sed 's/.*: //' | awk -F: '{print $(NF-1)*60+$NF}')
        rss=$(grep -a 'Maximum resident' "$log" | awk '{printf "%.0f", $NF/1024}')
        inner=$(grep -a ' inserted in ' "$log" | tail -1 | sed 's/.* in \([0-9.]*\) s.*/\1/')
        rows=$(grep -a ' inserted in ' "$log" | tail -1 | awk '{print $2}')
        printf '| %s | %s | %s | %s | %s | %s |\n' "$start" "$jobs" "$wall" "$inner" "$rows" "$rss"
    done
done
rm -f "$log"
