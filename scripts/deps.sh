#!/usr/bin/env bash
# Installs the Debian packages moat needs to build, test and run, if missing.
# Non-interactive and idempotent: a second run with everything present does
# nothing and needs no network.
set -euo pipefail

packages=(
    build-essential cmake pkg-config git curl ca-certificates
    libevent-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev
    libsodium-dev libjwt-dev libssl-dev
    liblmdb-dev
    nats-server libnats-dev
    postgresql-15 libpq-dev redis-server libhiredis-dev iproute2
    libcmocka-dev
    clang clang-format libclang-rt-14-dev valgrind jq
    chromium
)
# The console's browser tests drive Debian's chromium with playwright-core
# from npm (tests/browser). A Node.js already on PATH (with its npm) will do.
if ! command -v npm >/dev/null 2>&1; then
    packages+=(nodejs npm)
fi
if [ "${1:-}" = "--bench" ]; then
    packages+=(wrk hey nginx-light procps openssl linux-perf)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
