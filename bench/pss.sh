#!/usr/bin/env bash
# Whole-deployment memory (see bench/README.md): the proportional set size
# (Pss, shared pages split between the processes that map them) of every
# service of a running deployment and the supervisor, from
# /proc/<pid>/smaps_rollup, and their sum.
#
# Usage: bench/pss.sh [deployment-file] (default moat.json). Needs the
# deployment up (moat up) and a build (BENCH_BIN, default build/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
FILE=${1:-moat.json}
BIN=${BENCH_BIN:-build/bin}
status=$("$BIN/moat" status -f "$FILE" --json || true)
pids=$(jq -r '[.supervisor.pid] + [.services[].pid] | .[] | select(. != null)' <<<"$status")
names=$(jq -r '["moat"] + [.services[] | select(.pid != null) | .name] | .[]' <<<"$status")
total=0
paste <(echo "$names") <(echo "$pids") | while read -r name pid; do
    kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    printf '%-16s %8s KiB\n' "$name" "$kb"
done
for pid in $pids; do
    kb=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + kb))
done
awk -v t="$total" 'BEGIN {printf "%-16s %8d KiB = %.1f MiB\n", "total", t, t / 1024}'
