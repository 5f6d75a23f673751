#!/usr/bin/env bash
# The gateway's read cache in Redis (docs/gateway.md "Read cache"): GET one
# product through a gateway without the cache and through one with it, in
# alternation, against the same catalog (see bench/README.md).
#
# Usage: bench/cache.sh [seconds-per-run] (default 10). Needs `make build`,
# wrk and redis-server (scripts/deps.sh). Everything listens on 127.0.0.1
# and is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${BENCH_CONNECTIONS:-64}
BIN=${BENCH_BIN:-build/bin}
work=$(mktemp -d /tmp/moat-bench-cache.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_ready() {
    for _ in $(seq 1 200); do
        curl -fs "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "bench: service on port $1 did not become ready" >&2
    exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
key() { head -c 32 /dev/urandom | base64 -w0; }
b64url() { basenc --base64url -w0 | tr -d '='; }
hexkey() { printf '%s' "$1" | base64 -d | od -An -tx1 | tr -d ' \n'; }
jwt() { # base64-key claims-json -> HS256 JWT
    local h p
    h=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
    p=$(printf '%s' "$2" | b64url)
    printf '%s.%s.%s' "$h" "$p" "$(printf '%s.%s' "$h" "$p" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(hexkey "$1")" -binary | b64url)"
}
pair() { # caller-key-b64 callee: the callee's pair key for that caller
    printf 'moat-pair-key:%s' "$2" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$(hexkey "$1")" -binary | base64 -w0
}

gw_key=$(key); cat_key=$(key); jwt_secret=$(key); password=$(key)
cat_port=$(free_port); redis_port=$(free_port)
plain_port=$(free_port); cached_port=$(free_port)

cat >"$work/redis.conf" <<EOF
bind 127.0.0.1
port $redis_port
protected-mode yes
requirepass "$password"
save ""
appendonly no
maxmemory 64mb
maxmemory-policy volatile-lru
dir $work
EOF
printf '%s\n' "$password" >"$work/redis.password"
chmod 600 "$work/redis.password" "$work/redis.conf"
redis-server "$work/redis.conf" >"$work/redis.log" 2>&1 &
pids+=($!); redis_pid=$!

MOAT_LISTEN=127.0.0.1:$cat_port MOAT_DATA_DIR=$work/catalog \
    MOAT_SERVICE_KEY=$cat_key MOAT_PEER_KEYS="gateway:$(pair "$gw_key" catalog)" \
    $BIN/moat-catalog >"$work/catalog.log" 2>&1 &
pids+=($!); cat_pid=$!
wait_ready "$cat_port"
start_gateway() { # port extra-env...
    local port=$1
    shift
    env MOAT_LISTEN=127.0.0.1:$port MOAT_SERVICE_KEY=$gw_key \
        MOAT_JWT_SECRET=$jwt_secret MOAT_GATEWAY_RATE=0 \
        MOAT_GATEWAY_PUBLIC="GET /api/v1/products" \
        MOAT_GATEWAY_ROUTES="/api/v1/products=catalog@http://127.0.0.1:$cat_port/v1/products" \
        "$@" $BIN/moat-gateway >"$work/gateway-$port.log" 2>&1 &
    pids+=($!)
    wait_ready "$port"
}
start_gateway "$plain_port"
plain_pid=${pids[-1]}
start_gateway "$cached_port" MOAT_REDIS_URL=redis://127.0.0.1:$redis_port \
    MOAT_REDIS_PASSWORD_FILE="$work/redis.password"
cached_pid=${pids[-1]}

now=$(date +%s)
admin=$(jwt "$jwt_secret" "{\"iss\":\"moat-users\",\"aud\":\"moat\",\"sub\":\"usr_bench\",\"role\":\"admin\",\"iat\":$now,\"exp\":$((now + 600))}")
id=$(curl -fs -X POST "http://127.0.0.1:$plain_port/api/v1/products" \
    -H 'content-type: application/json' -H "authorization: Bearer $admin" \
    -d '{"sku":"BENCH-1","name":"Benchmark mug","price":{"amount":1250,"currency":"EUR"},"attributes":{"color":"blue"}}' |
    sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || { echo "bench: could not create a product" >&2; exit 1; }
for _ in $(seq 1 200); do
    curl -fsi "http://127.0.0.1:$cached_port/api/v1/products/$id" | grep -qi '^moat-cache: hit' && break
    sleep 0.05
done

run() { # name gateway-pid port
    local g0 c0 r0 out n tck
    g0=$(cpu_ticks "$2") c0=$(cpu_ticks "$cat_pid") r0=$(cpu_ticks "$redis_pid")
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "http://127.0.0.1:$3/api/v1/products/$id")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    tck=$(getconf CLK_TCK)
    local rps
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    if [ "$1" = cache ]; then last_cache=$rps; else last_no_cache=$rps; fi
    printf '%-10s %10s req/s   p50 %-9s p99 %-9s cpu/req: gateway %s catalog %s redis %s us %s\n' "$1" \
        "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")" \
        $(awk -v g=$(($(cpu_ticks "$2") - g0)) -v c=$(($(cpu_ticks "$cat_pid") - c0)) \
            -v r=$(($(cpu_ticks "$redis_pid") - r0)) -v n="$n" -v t="$tck" \
            'BEGIN {printf "%.1f %.1f %.1f", g * 1e6 / t / n, c * 1e6 / t / n, r * 1e6 / t / n}') \
        "$(awk '/Non-2xx|Socket errors/' <<<"$out")"
}

echo "moat read cache benchmark  $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t2 -c$CONNS -d${DUR}s"

# The issue's yardstick, measured in the same run: an nginx -> nginx proxy
# with a keep-alive upstream pool (as in bench/http.sh), if nginx is there.
ng_port=$(free_port); ngp_port=$(free_port)
if command -v nginx >/dev/null 2>&1; then
    mkdir -p "$work/nginx/logs"
    cat >"$work/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    server { listen 127.0.0.1:$ng_port; location / { return 200 "ok"; } }
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
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$ngp_port/" >/dev/null 2>&1 && break
        sleep 0.05
    done
fi
proxy() { # the nginx -> nginx figure, req/s
    local out
    out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$ngp_port/")
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

for round in 1 2; do
    px=""
    command -v nginx >/dev/null 2>&1 && px=$(proxy) &&
        printf '%-10s %10s req/s\n' nginx-proxy "$px"
    run no-cache "$plain_pid" "$plain_port"
    run cache "$cached_pid" "$cached_port"
    if [ -n "$px" ]; then
        # Ratio of each gateway run to the nginx proxy run just before it.
        printf 'ratio to the nginx proxy: no cache %s, cache %s\n' \
            "$(awk -v a="$last_no_cache" -v b="$px" 'BEGIN {printf "%.2f", a / b}')" \
            "$(awk -v a="$last_cache" -v b="$px" 'BEGIN {printf "%.2f", a / b}')"
    fi
done
