#!/usr/bin/env bash
# The shop on PostgreSQL + JetStream + Redis with two catalogs and two
# gateways (deploy/scale.json) beside the embedded default (moat.json), back
# to back in one run (see bench/README.md, "PostgreSQL + JetStream beside
# the embedded engines").
#
# For each file: a copy with every loopback port moved to a free one, the
# gateway's per-client limit off (MOAT_GATEWAY_RATE=0), users' logins per
# address per minute raised to 1000 (bench logs its customers in from one
# address) and its state in a temporary var_dir, under `moat up`; then
# `moat bench --setup` closed loop
# (CONC clients) and open loop (RATE orders/s), SECONDS each, through the
# first gateway. Prints one row per run (sagas/s, acceptance and completion
# latency, CPU per saga of every process including postgres, nats-server
# and redis-server, event lag pooled over every consumer's hop), the ratios,
# and the CPU per saga of each process.
#
# Usage: bench/scale.sh [seconds] [concurrency] [rate] (default 20 64 300).
# BENCH_BIN (default build/bin) picks the build; BENCH_KEEP=1 keeps the
# JSON of each run (printed path). Needs jq, python3 and what
# scripts/deps.sh installs. Each run is bounded (timeout) and everything
# started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20}
CONC=${2:-64}
RATE=${3:-300}
BIN=${BENCH_BIN:-build/bin}
work=$(mktemp -d /tmp/moat-bench-scale.XXXXXX)
chmod 711 "$work" # the PostgreSQL cluster runs as the postgres user
up=""
cleanup() {
    if [ -n "$up" ]; then
        kill "$up" 2>/dev/null || true
        timeout 60 tail --pid="$up" -f /dev/null 2>/dev/null || kill -9 "$up" 2>/dev/null || true
        wait "$up" 2>/dev/null || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "runs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# copy SRC NAME: $work/NAME.json, every 127.0.0.1:PORT moved to a free port
# (the same port everywhere it appears), var_dir under $work, rate limit off.
copy() {
    python3 - "$1" "$work/$2.json" "$work/var-$2" <<'EOF'
import json, re, socket, sys
src, dst, var = sys.argv[1:4]
text = open(src).read()
ports, socks = {}, []
for p in sorted(set(re.findall(r'127\.0\.0\.1:(\d+)', text))):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
    ports[p] = str(s.getsockname()[1])
text = re.sub(r'127\.0\.0\.1:(\d+)', lambda m: "127.0.0.1:" + ports[m.group(1)], text)
d = json.loads(text)
d["var_dir"] = var
for s in d["services"]:
    if s["name"] == "gateway":
        s.setdefault("env", {})["MOAT_GATEWAY_RATE"] = "0"
    if s["name"] == "users": # bench logs in RATE/4 customers from one address
        s.setdefault("env", {})["MOAT_USERS_LOGIN_PER_IP_PER_MIN"] = "1000"
json.dump(d, open(dst, "w"), indent=2)
EOF
}

# idle NAME: each process's CPU (% of one core, with its children's: the
# postgres backends) over 5 s with no orders, into $work/NAME-idle.json.
idle() {
    python3 - "$work/var-$1/moat.state" "$work/$1-idle.json" <<'EOF'
import json, os, sys, time
state = json.load(open(sys.argv[1]))
procs = {s.get("label", s["name"]): s["pid"] for s in state["services"] if s.get("pid")}
tck = os.sysconf("SC_CLK_TCK")
def stat(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[1]), (int(f[11]) + int(f[12])) / tck, (int(f[13]) + int(f[14])) / tck
def sample():
    cpu = {}
    for name, pid in procs.items():
        _, own, reaped = stat(pid)
        cpu[name] = own + reaped
    byparent = {pid: name for name, pid in procs.items()}
    for e in os.listdir("/proc"):
        try:
            ppid, own, _ = stat(int(e))
        except (ValueError, OSError, IndexError):
            continue
        if ppid in byparent:
            cpu[byparent[ppid]] += own
    return cpu
a = sample()
time.sleep(5)
b = sample()
json.dump({n: 100 * (b[n] - a[n]) / 5 for n in a}, open(sys.argv[2], "w"))
EOF
}

bench() { # name file mode args...
    local name=$1 file=$2 mode=$3
    shift 3
    local out=$work/$name-$mode.json
    echo "  $mode loop ($*), load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    if ! timeout $((DUR + 240)) "$BIN"/moat bench -f "$file" --mode "$mode" \
        --duration "$DUR" --json "$@" >"$out" 2>"$work/$name-$mode.err" ||
        ! jq -e .completed "$out" >/dev/null 2>&1; then
        echo "bench: $name $mode failed:" >&2
        tail -5 "$work/$name-$mode.err" >&2
        echo '{}' >"$out"
    fi
    jq -c --arg name "$name" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{name: $name, load: $load} + .' "$out" >>"$work/rows.jsonl"
}

run() { # name source-file
    local name=$1 file=$work/$1.json
    copy "$2" "$name"
    echo "== $name ($2)" >&2
    "$BIN"/moat up -f "$file" >"$work/up-$name.log" 2>&1 &
    up=$!
    local ok=""
    for _ in $(seq 1 600); do
        if "$BIN"/moat status -f "$file" >/dev/null 2>&1; then
            ok=1
            break
        fi
        kill -0 "$up" 2>/dev/null || break
        sleep 0.2
    done
    if [ -z "$ok" ]; then
        echo "bench: $name did not come up; the end of its log:" >&2
        tail -20 "$work/up-$name.log" >&2
        exit 1
    fi
    sleep 3 # let the start settle
    idle "$name"
    bench "$name" "$file" closed --setup --concurrency "$CONC"
    bench "$name" "$file" open --rate "$RATE"
    kill "$up"
    timeout 60 tail --pid="$up" -f /dev/null || kill -9 "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    up=""
}

echo "moat: PostgreSQL + JetStream beside the embedded engines  $(date -u +%Y-%m-%dT%H:%MZ)"
echo "machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "each run: $DUR s; closed loop $CONC clients, open loop $RATE orders/s"
: >"$work/rows.jsonl"
run embedded moat.json
run scale deploy/scale.json

jq -rs '
  def f(x): if x == null then "-" else (x * 10 | round / 10 | tostring) end;
  def lag(q): ([.hops[]? | select(.hop == "all hops")][0][q]) as $v
              | if $v == null then ">max" else ($v | tostring) end;
  "",
  "| deployment | mode | sagas/s | accept p50 / p99 ms | completion p50 / p99 ms | CPU per saga | event lag p50 / p99 | errors (429, 5xx, none) | load before |",
  "|---|---|---:|---:|---:|---:|---:|---:|---|",
  (.[] | if .mode == null then "| \(.name) | run failed |  |  |  |  |  |  | \(.load) |" else
   "| \(.name) | \(.mode)\(if .mode == "open" then " \(.rate)/s" else " \(.concurrency)" end) | \(f(.completed_per_s)) | \(f(.accept_latency_ms.p50)) / \(f(.accept_latency_ms.p99)) | \(f(.complete_latency_ms.p50)) / \(f(.complete_latency_ms.p99)) | \(f(.per_saga.cpu_us_per_unit / 1000)) ms | <= \(lag("p50")) / \(lag("p99")) ms | \(.errors.rate_limited // "-"), \(.errors.server // "-"), \(.errors.transport // "-") | \(.load) |" end),
  "",
  "scale / embedded:",
  (group_by(.mode) | .[] | select(length == 2 and .[0].mode != null) |
   (map(select(.name == "embedded"))[0]) as $e | (map(select(.name == "scale"))[0]) as $s |
   "  \($e.mode): sagas/s x\(f($s.completed_per_s / $e.completed_per_s)), CPU per saga x\(f($s.per_saga.cpu_us_per_unit / $e.per_saga.cpu_us_per_unit)), completion p99 x\(f($s.complete_latency_ms.p99 / $e.complete_latency_ms.p99)), accept p99 x\(f($s.accept_latency_ms.p99 / $e.accept_latency_ms.p99))"),
  "",
  "CPU per completed saga (us) by process:",
  ([.[] | select(.mode != null) | .name = "\(.name) \(.mode)"] as $o |
   ([$o[] | .services[]?.service] | unique) as $names |
   "| process | \($o | map(.name) | join(" | ")) |",
   "|---|\($o | map("---:") | join("|"))|",
   ($names[] as $n | "| \($n) | \($o | map([.services[]? | select(.service == $n) | .cpu_us_per_unit][0] | if . == null then "-" else (round | tostring) end) | join(" | ")) |")),
  "",
  "Idle CPU (% of one core, 5 s without orders, before the runs):",
  "  embedded: \($idle[0][0] | to_entries | map(select(.value >= 0.5) | "\(.key) \(.value | round)") | join(", ") | if . == "" then "every process < 0.5" else . end)",
  "  scale:    \($idle[0][1] | to_entries | map(select(.value >= 0.5) | "\(.key) \(.value | round)") | join(", ") | if . == "" then "every process < 0.5" else . end)",
  "",
  "Node/Express + PostgreSQL on this machine (bench/README.md): 200-216 orders/s, p99 297-358 ms."
' --slurpfile idle <(jq -s . "$work/embedded-idle.json" "$work/scale-idle.json") "$work/rows.jsonl"
