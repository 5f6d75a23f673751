#!/usr/bin/env bash
# Event lag benchmark (see bench/README.md): how long after catalog commits
# a change does search have it in its index?
#
#   1. creates at a fixed rate (BENCH_RATE, default 500/s) for DUR seconds,
#   2. creates as fast as catalog takes them (wrk -t2 -c16) for DUR seconds,
# each product through catalog's API with an admin service token. search
# follows catalog's feed (long poll) as in production. The lag of each
# product is measured inside the services, not by polling from outside:
# the event's time (stamped in catalog's transaction, the CloudEvent
# "time") to the moment search's handler applied it (applied_at_ms in
# search's products table), both on this machine's clock, read back as
# percentiles from GET /v1/admin/search/lag per phase. The lag includes
# catalog's commit, the feed waking the parked reader, the HTTP answer,
# search's parse and handler; not search's own commit (well under 1 ms).
#
# BENCH_TRANSPORT=jetstream runs the same through NATS JetStream.
#
# Usage: bench/events.sh [seconds-per-phase] (default 10). Needs a build
# (BENCH_BIN, default build/bin) and wrk, curl, openssl. Every server
# listens on 127.0.0.1 only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
RATE=${BENCH_RATE:-500}
BIN=${BENCH_BIN:-build/bin}
work=$(mktemp -d /tmp/moat-bench-events.XXXXXX)
pids=()
cleanup() {
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
now_ms() { date +%s%3N; }

# Real service identities, as moat up would generate them.
key() { head -c 32 /dev/urandom | base64 -w0; }
# A callee knows only each caller's pair key towards it (moat_auth_pair_key):
# HMAC-SHA256("moat-pair-key:" callee) under the caller's key.
pair() { # caller-key-b64 callee
    printf 'moat-pair-key:%s' "$2" |
        openssl dgst -sha256 -mac HMAC \
            -macopt "hexkey:$(printf '%s' "$1" | base64 -d | od -An -tx1 | tr -d ' \n')" \
            -binary | base64 -w0
}
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
# Service tokens live 60 s: one is minted right before each use.
token() { # audience [role]
    local usr=""
    [ -n "${2:-}" ] && usr=",\"usr\":\"usr_bench\",\"role\":\"$2\""
    jwt "$(pair "$bench_key" "$1")" "{\"iss\":\"bench\",\"sub\":\"bench\",\"aud\":\"$1\",\"iat\":$(now),\"exp\":$(($(now) + 60))$usr}"
}
get() { # audience url
    curl -fs -H "Moat-Service-Token: $(token "$1")" "$2"
}

# BENCH_TRANSPORT=jetstream: events go through a nats-server of our own
# (JetStream on, store in $work) instead of search long-polling catalog's
# feed (docs/operations.md, "Running on NATS JetStream").
TRANSPORT=${BENCH_TRANSPORT:-http}
if [ "$TRANSPORT" = jetstream ]; then
    nats_port=$(free_port)
    mkdir -p "$work/nats"
    cat >"$work/nats/nats.conf" <<CONF
listen: "127.0.0.1:$nats_port"
jetstream { store_dir: "$work/nats/jetstream", max_memory_store: 64MB, max_file_store: 1024MB }
CONF
    /usr/sbin/nats-server -c "$work/nats/nats.conf" >"$work/nats.log" 2>&1 &
    pids+=($!)
    export MOAT_NATS_URL=nats://127.0.0.1:$nats_port
elif [ "$TRANSPORT" != http ]; then
    echo "bench: BENCH_TRANSPORT must be http or jetstream" >&2
    exit 2
fi

cat_key=$(key); search_key=$(key); bench_key=$(key)
cat_port=$(free_port)
search_port=$(free_port)

# The bench identity reads /metrics and the admin routes: an operator.
MOAT_LISTEN=127.0.0.1:$cat_port MOAT_DATA_DIR=$work/catalog \
    MOAT_ACCESS_LOG=${BENCH_ACCESS_LOG:-1} MOAT_OPERATORS=bench \
    MOAT_SERVICE_KEY=$cat_key MOAT_PEER_KEYS="search:$(pair "$search_key" catalog),bench:$(pair "$bench_key" catalog)" \
    "$BIN"/moat-catalog >"$work/catalog.log" 2>&1 &
pids+=($!)
cat_pid=$!
wait_ready "$cat_port"
start_search() {
    MOAT_LISTEN=127.0.0.1:$search_port MOAT_DATA_DIR=$work/search \
        MOAT_ACCESS_LOG=${BENCH_ACCESS_LOG:-1} MOAT_OPERATORS=bench \
        MOAT_SERVICE_KEY=$search_key MOAT_PEER_KEYS="bench:$(pair "$bench_key" search)" \
        MOAT_SEARCH_CATALOG_URL=http://127.0.0.1:$cat_port \
        "$BIN"/moat-search >>"$work/search.log" 2>&1 &
    search_pid=$!
    pids+=("$search_pid")
    wait_ready "$search_port"
}
start_search

# wrk: every request a new product (unique SKU per thread and request);
# BENCH_DELAY_MS paces each connection for the fixed-rate phase.
cat >"$work/create.lua" <<'LUA'
local counter = 1
local threads = {}
function setup(thread)
    thread:set("tid", counter)
    counter = counter + 1
end
function init(args)
    n = 0
    phase = os.getenv("BENCH_PHASE") or "p"
    pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
end
function request()
    n = n + 1
    local body = string.format(
        '{"sku":"B-%s-%d-%d","name":"Bench product %d %d",' ..
        '"description":"created by bench/events.sh",' ..
        '"price":{"amount":%d,"currency":"EUR"},"attributes":{"bench":"yes"}}',
        phase, tid, n, tid, n, 100 + n % 1000)
    return wrk.format(nil, "/v1/products", nil, body)
end
function delay()
    return pause
end
LUA

catalog_head() {
    get catalog "http://127.0.0.1:$cat_port/metrics" | awk '$1=="moat_outbox_head_seq" {print $2}'
}
caught_up() { # wait until search's cursor is catalog's head
    local head
    head=$(catalog_head)
    for _ in $(seq 1 600); do
        if [ "$(get search "http://127.0.0.1:$search_port/v1/admin/consumer" |
            jq '.sources[0].cursor')" = "$head" ]; then
            return 0
        fi
        sleep 0.05
    done
    echo "bench: search did not catch up" >&2
    exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
phase() { # name tag threads connections delay_ms -> the phase's figures
    local name=$1 tag=$2 t=$3 c=$4 d=$5 start end out rps errs lag c0 s0
    start=$(now_ms)
    c0=$(cpu_ticks "$cat_pid") s0=$(cpu_ticks "$search_pid")
    out=$(BENCH_PHASE=$tag BENCH_DELAY_MS=$d wrk -t"$t" -c"$c" -d"${DUR}s" \
        -s "$work/create.lua" -H "Moat-Service-Token: $(token catalog admin)" \
        "http://127.0.0.1:$cat_port")
    caught_up
    end=$(now_ms)
    # CPU microseconds per event: catalog (create + feed) and search.
    local cpu
    cpu=$(awk -v c=$(($(cpu_ticks "$cat_pid") - c0)) -v s=$(($(cpu_ticks "$search_pid") - s0)) \
        -v n="$(awk '/requests in/ {print $1}' <<<"$out")" -v t="$(getconf CLK_TCK)" \
        'BEGIN {printf "cpu/event catalog %.0f search %.0f us", c * 1e6 / t / n, s * 1e6 / t / n}')
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    errs=$(awk '/Non-2xx|Socket errors/' <<<"$out")
    lag=$(get search "http://127.0.0.1:$search_port/v1/admin/search/lag?since_ms=$start&until_ms=$end")
    # search's own pace: products indexed per second while it applied.
    local applied
    applied=$(jq '(.count * 1000 / ([.last_applied_ms - .first_applied_ms, 1] | max)) | floor' <<<"$lag")
    printf '%-20s %8s creates/s -> %6s indexed (%5s/s)  lag p50 %5s ms  p90 %5s ms  p99 %5s ms  max %5s ms  %s %s\n' \
        "$name" "$rps" "$(jq .count <<<"$lag")" "$applied" "$(jq .p50_ms <<<"$lag")" \
        "$(jq .p90_ms <<<"$lag")" "$(jq .p99_ms <<<"$lag")" "$(jq .max_ms <<<"$lag")" "$cpu" "$errs"
}

# Pacing: c connections each waiting BENCH_DELAY_MS between requests.
conns=5
delay=$(awk -v r="$RATE" -v c=$conns 'BEGIN {printf "%d", c * 1000 / r}')

echo "moat event lag benchmark  $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)"
transport="stream"
[ "${MOAT_FEED_STREAM:-1}" = "0" ] && transport="long poll"
if [ "$TRANSPORT" = jetstream ]; then
    echo "catalog -> relay -> JetStream -> durable pull consumer -> search; ${DUR}s per phase; access log ${BENCH_ACCESS_LOG:-1}"
else
    echo "catalog -> feed ($transport) -> search; ${DUR}s per phase; access log ${BENCH_ACCESS_LOG:-1}"
fi
echo
phase "fixed-rate(~${RATE}/s)" f 1 "$conns" "$delay"
phase "max-rate" m 2 16 0

# Backlog: search down while catalog takes writes, then started.
kill "$search_pid"
wait "$search_pid" || true
BENCH_PHASE=b wrk -t2 -c16 -d"${DUR}s" -s "$work/create.lua" \
    -H "Moat-Service-Token: $(token catalog admin)" "http://127.0.0.1:$cat_port" >/dev/null
start=$(now_ms)
start_search
caught_up
lag=$(get search "http://127.0.0.1:$search_port/v1/admin/search/lag?since_ms=$start")
printf '%-20s %6s events applied from a backlog in %5.1f s (%5s/s)\n' "backlog" \
    "$(jq .count <<<"$lag")" "$(jq '(.last_applied_ms - .first_applied_ms) / 1000' <<<"$lag")" \
    "$(jq '(.count * 1000 / ([.last_applied_ms - .first_applied_ms, 1] | max)) | floor' <<<"$lag")"
echo
echo "events in catalog's feed: $(catalog_head); search.db $(du -h "$work/search/search.db" | cut -f1)," \
    "catalog.db $(du -h "$work/catalog/catalog.db" | cut -f1)"
