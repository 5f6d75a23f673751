#!/usr/bin/env bash
# Sagas/s and completion latency of the shop on each event transport, one
# after the other in the same run (see bench/README.md, "Event transports").
# For each of http and jetstream: moat.json (its ports, which must be free)
# with the gateway's per-client limit off and "transport" set, its state in
# a temporary var_dir, under `moat up`; then `moat bench --setup` closed
# loop. Usage: bench/transports.sh [seconds] [concurrency] (default 15 32).
# BENCH_BIN (default build/bin) picks the build.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
CONC=${2:-32}
BIN=${BENCH_BIN:-build/bin}
work=$(mktemp -d /tmp/moat-bench-transports.XXXXXX)
up=""
cleanup() {
    [ -n "$up" ] && kill "$up" 2>/dev/null && wait "$up" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "moat saga benchmark per transport  $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
for transport in http jetstream; do
    file=$work/$transport.json
    jq --arg t "$transport" --arg var "$work/var-$transport" \
        '.transport = $t | .var_dir = $var |
         (.services[] | select(.name == "gateway") | .env.MOAT_GATEWAY_RATE) = "0"' \
        moat.json >"$file"
    "$BIN"/moat up -f "$file" >"$work/up-$transport.log" 2>&1 &
    up=$!
    for _ in $(seq 1 300); do
        "$BIN"/moat status -f "$file" >/dev/null 2>&1 && break
        sleep 0.2
    done
    echo
    echo "== transport: $transport"
    "$BIN"/moat bench -f "$file" --setup --mode closed --concurrency "$CONC" \
        --duration "$DUR" 2>&1 | grep -v "rate limited"
    kill "$up"
    wait "$up" || true
    up=""
done
