#!/usr/bin/env bash
# The cost of TLS on every hop (see bench/README.md "TLS"): the shop of
# moat.json started twice by `moat up` on free ports, once with "tls": true
# and once with "tls": false, one after the other in the same run, and
# each measured the same way:
#   1. GET /api/v1/products through the gateway with keep-alive (wrk):
#      client -> gateway (TLS), gateway -> catalog (mutual TLS);
#   2. the same with a new connection per request (hey
#      -disable-keepalive): a full or resumed handshake every time;
#   3. `moat bench` closed loop: orders through the saga, every hop and
#      feed poll over mutual TLS.
#
# Usage: bench/tls.sh [seconds-per-run] (default 10). Needs `make build`
# (or BIN=build-test/bin) and wrk, hey, jq (scripts/deps.sh --bench).
# Everything listens on 127.0.0.1; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${BENCH_CONNECTIONS:-32}
WORKERS=${BENCH_WORKERS:-32}
BIN=${BIN:-build/bin}
MOAT="$BIN/moat"
export MOAT_BIN_DIR="$PWD/$BIN"
work=$(mktemp -d /tmp/moat-tls-bench.XXXXXX)
up_pid=""
cleanup() {
    [ -n "$up_pid" ] && kill "$up_pid" 2>/dev/null && wait "$up_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# moat.json with fresh ports, "tls" as $1, the gateway's per-client limit
# off (one bench process is one client), state under $work/var-$1.
write_deployment() {
    python3 - "$1" "$work/moat-$1.json" <<'EOF'
import json, re, socket, sys
tls, dst = sys.argv[1] == "true", sys.argv[2]
text = open("moat.json").read()
for old in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", text))):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); new = s.getsockname()[1]; s.close()
    text = re.sub(r"127\.0\.0\.1:%s\b" % old, "127.0.0.1:%d" % new, text)
d = json.loads(text)
d["tls"] = tls
d["var_dir"] = dst.replace(".json", "-var")
for s in d["services"]:
    if s.get("routes"):
        s.setdefault("env", {})["MOAT_GATEWAY_RATE"] = "0"
json.dump(d, open(dst, "w"), indent=2)
EOF
}

measure() { # tls
    local file="$work/moat-$1.json" scheme=http
    [ "$1" = true ] && scheme=https
    write_deployment "$1"
    "$MOAT" up -f "$file" >"$work/up-$1.log" 2>&1 &
    up_pid=$!
    local gw
    gw=$(jq -r '.services[] | select(.routes) | .listen' "$file")
    for _ in $(seq 1 400); do
        curl -kfs "$scheme://$gw/readyz" >/dev/null 2>&1 && break
        sleep 0.05
    done
    local url="$scheme://$gw/api/v1/products"
    local w h b
    w=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$url")
    h=$(hey -z "${DUR}s" -c 16 -disable-keepalive "$url")
    b=$("$MOAT" bench -f "$file" --setup --mode closed \
        --concurrency "$WORKERS" --duration "$DUR" --json 2>/dev/null)
    printf '| %s | %s | %s | %s | %s | %.0f | %.1f |\n' \
        "$([ "$1" = true ] && echo "TLS (mutual inside)" || echo plain)" \
        "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$w")" \
        "$(awk '/ 99%/ {print $2}' <<<"$w")" \
        "$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$h")" \
        "$(awk '/ 99% in/ {printf "%.1f ms", $3 * 1000}' <<<"$h")" \
        "$(jq '.accepted_per_s' <<<"$b")" \
        "$(jq '.accept_latency_ms.p99' <<<"$b")"
    "$MOAT" down -f "$file" >/dev/null 2>&1 || true
    wait "$up_pid" 2>/dev/null || true
    up_pid=""
}

echo "| hops | GET keep-alive req/s | p99 | GET new connection req/s | p99 | sagas accepted/s | accept p99 (ms) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
measure false
measure true
