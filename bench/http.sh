#!/usr/bin/env bash
# HTTP benchmark of the foundation slice (see bench/README.md):
#   1. GET one product through the gateway       (gateway -> catalog)
#   2. GET the same product directly from catalog
#   3. nginx `return 200` on the same machine, as the ceiling
# then each moat target again at half its measured maximum rate, for the
# p99 at a sustainable load, and idle RSS of every service.
#
# Usage: bench/http.sh [seconds-per-run] (default 10). Needs `make build`
# (done by `make bench`) and wrk, hey, nginx (scripts/deps.sh --bench).
# BENCH_PERF=<file>: profile the gateway with perf (linux-perf) during its
# maximum-rate run and write the top symbols, then the top libraries, there.
# Every server listens on 127.0.0.1 only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${BENCH_CONNECTIONS:-64}
BIN=${BENCH_BIN:-build/bin}
work=$(mktemp -d /tmp/moat-bench.XXXXXX)
pids=()
cleanup() {
    [ -n "${BENCH_HOLD:-}" ] && sleep "$BENCH_HOLD"
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null ||
        shuf -i 20000-60000 -n 1
}
wait_ready() {
    for _ in $(seq 1 200); do
        curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench: service on port $1 did not become ready" >&2
    exit 1
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Real service identities, as moat up would generate them: the gateway
# signs a service token per upstream call and catalog verifies it.
key() { head -c 32 /dev/urandom | base64 -w0; }
b64url() { basenc --base64url -w0 | tr -d '='; }
jwt() { # base64-key claims-json -> HS256 JWT
    local h p hexkey sig
    h=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
    p=$(printf '%s' "$2" | b64url)
    hexkey=$(printf '%s' "$1" | base64 -d | od -An -tx1 | tr -d ' \n')
    sig=$(printf '%s.%s' "$h" "$p" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | b64url)
    printf '%s.%s.%s' "$h" "$p" "$sig"
}
now() { date +%s; }
admin_token() {
    jwt "$jwt_secret" "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"usr_bench\",\"role\":\"admin\",\"iat\":$(now),\"exp\":$(($(now) + 600))}"
}
# Service tokens live 60 s: one is minted right before each direct run.
service_token() {
    jwt "$(pair "$bench_key" catalog)" "{\"iss\":\"bench\",\"sub\":\"bench\",\"aud\":\"catalog\",\"iat\":$(now),\"exp\":$(($(now) + 60))}"
}
gw_key=$(key); cat_key=$(key); bench_key=$(key); jwt_secret=$(key)
# A callee knows only each caller's pair key towards it (moat_auth_pair_key):
# HMAC-SHA256("moat-pair-key:" callee) under the caller's key.
pair() { # caller-key-b64 callee
    printf 'moat-pair-key:%s' "$2" |
        openssl dgst -sha256 -mac HMAC \
            -macopt "hexkey:$(printf '%s' "$1" | base64 -d | od -An -tx1 | tr -d ' \n')" \
            -binary | base64 -w0
}

cat_port=$(free_port)
gw_port=$(free_port)
ng_port=$(free_port)
ngp_port=$(free_port)

MOAT_LISTEN=127.0.0.1:$cat_port MOAT_DATA_DIR=$work/catalog MOAT_ACCESS_LOG=${BENCH_ACCESS_LOG:-1} \
    MOAT_SERVICE_KEY=$cat_key MOAT_PEER_KEYS="gateway:$(pair "$gw_key" catalog),bench:$(pair "$bench_key" catalog)" \
    $BIN/moat-catalog >"$work/catalog.log" 2>&1 &
pids+=($!); cat_pid=$!
wait_ready "$cat_port"
MOAT_LISTEN=127.0.0.1:$gw_port MOAT_ACCESS_LOG=${BENCH_ACCESS_LOG:-1} \
    MOAT_SERVICE_KEY=$gw_key MOAT_JWT_SECRET=$jwt_secret MOAT_GATEWAY_RATE=0 \
    MOAT_GATEWAY_PUBLIC="GET /api/v1/products" \
    MOAT_GATEWAY_ROUTES="/api/v1/products=catalog@http://127.0.0.1:$cat_port/v1/products" \
    $BIN/moat-gateway >"$work/gateway.log" 2>&1 &
pids+=($!); gw_pid=$!
wait_ready "$gw_port"

mkdir -p "$work/nginx/logs"
cat >"$work/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server {
        listen 127.0.0.1:$ng_port;
        location / { return 200 "ok"; }
    }
    # The same ceiling behind a second nginx proxying with keep-alive: the
    # like-for-like figure for a gateway (one proxy hop, pooled upstream).
    upstream ng_origin { server 127.0.0.1:$ng_port; keepalive 64; }
    server {
        listen 127.0.0.1:$ngp_port;
        location / {
            proxy_pass http://ng_origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGX
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!)
sleep 0.3

idle_cat=$(rss_kb $cat_pid)
idle_gw=$(rss_kb $gw_pid)

id=$(curl -fs -X POST "http://127.0.0.1:$gw_port/api/v1/products" \
    -H 'content-type: application/json' -H "authorization: Bearer $(admin_token)" \
    -d '{"sku":"BENCH-1","name":"Benchmark mug","price":{"amount":1250,"currency":"EUR"},"attributes":{"color":"blue"}}' |
    sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "bench: could not create a product" >&2; exit 1; }

gw_url="http://127.0.0.1:$gw_port/api/v1/products/$id"
cat_url="http://127.0.0.1:$cat_port/v1/products/$id"
ng_url="http://127.0.0.1:$ng_port/"
ngp_url="http://127.0.0.1:$ngp_port/"

run_wrk() { # name url [header] -> prints "name rps p50 p99"
    local out hdr=()
    [ -n "${3:-}" ] && hdr=(-H "$3")
    local g0 c0
    g0=$(cpu_ticks "$gw_pid") c0=$(cpu_ticks "$cat_pid")
    local perf_pid=""
    if [ -n "${BENCH_PERF:-}" ] && [ "$1" = via-gateway ]; then
        # Flat profile of the gateway under this load (linux-perf).
        perf record -q -F 999 -p "$gw_pid" -o "$work/perf.data" -- sleep "$DUR" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "${hdr[@]}" "$2")
    if [ -n "$perf_pid" ]; then
        wait "$perf_pid" || true
        perf report -i "$work/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null |
            grep -E '^ +[0-9]' | head -n "${BENCH_PERF_TOP:-30}" >"$BENCH_PERF" || true
        perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null |
            grep -E '^ +[0-9]' | head -n 12 >>"$BENCH_PERF" || true
    fi
    # CPU microseconds per request of the gateway and catalog: robust on a
    # shared machine, where req/s moves with the neighbours' load.
    local n tck
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    tck=$(getconf CLK_TCK)
    awk -v g=$(($(cpu_ticks "$gw_pid") - g0)) -v c=$(($(cpu_ticks "$cat_pid") - c0)) \
        -v n="$n" -v t="$tck" 'BEGIN {printf "%.1f %.1f\n", g * 1e6 / t / n, c * 1e6 / t / n}' \
        >"$work/cpu.$1"
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    local errs
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    printf '%-28s %10s req/s   p50 %-9s p99 %-9s cpu/req gw %s cat %s us %s\n' "$1" "$rps" "$p50" "$p99" \
        $(cat "$work/cpu.$1") "$errs"
    echo "$rps" >"$work/rps.$1"
}
run_hey() { # name url rate [header] -> p50/p99 at a fixed total rate
    local c=16 out hdr=()
    [ -n "${4:-}" ] && hdr=(-H "$4")
    local per=$(awk -v r="$3" -v c=$c 'BEGIN {printf "%d", r / c}')
    out=$(hey -z "${DUR}s" -c $c -q "$per" "${hdr[@]}" "$2")
    local rps p50 p99
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '/50% in/ {print $3*1000 "ms"}' <<<"$out")
    p99=$(awk '/99% in/ {print $3*1000 "ms"}' <<<"$out")
    printf '%-28s %10s req/s   p50 %-9s p99 %-9s (target %s/s)\n' "$1" "$rps" "$p50" "$p99" "$3"
}

echo "moat HTTP benchmark  $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)"
echo "wrk -t2 -c$CONNS -d${DUR}s --latency; access log ${BENCH_ACCESS_LOG:-1}"
echo
echo "maximum throughput (closed loop):"
run_wrk nginx-return-200 "$ng_url"
run_wrk nginx-proxy-nginx "$ngp_url"
run_wrk catalog-direct "$cat_url" "Moat-Service-Token: $(service_token)"
run_wrk via-gateway "$gw_url"
echo
gw_half=$(awk '{printf "%d", $1 / 2}' "$work/rps.via-gateway")
cat_half=$(awk '{printf "%d", $1 / 2}' "$work/rps.catalog-direct")
echo "latency at half the maximum rate (hey, 16 connections, fixed rate):"
run_hey catalog-direct@half "$cat_url" "$cat_half" "Moat-Service-Token: $(service_token)"
run_hey via-gateway@half "$gw_url" "$gw_half"
echo
echo "RSS: catalog idle ${idle_cat} KiB, after load $(rss_kb $cat_pid) KiB;" \
    "gateway idle ${idle_gw} KiB, after load $(rss_kb $gw_pid) KiB"
gw_ratio=$(awk -v a="$(cat "$work/rps.via-gateway")" -v b="$(cat "$work/rps.nginx-return-200")" 'BEGIN {printf "%.2f", a / b}')
echo "gateway / nginx ratio: $gw_ratio"
px_ratio=$(awk -v a="$(cat "$work/rps.via-gateway")" -v b="$(cat "$work/rps.nginx-proxy-nginx")" 'BEGIN {printf "%.2f", a / b}')
echo "gateway / (nginx -> nginx keep-alive proxy) ratio: $px_ratio"
