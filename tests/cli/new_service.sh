#!/bin/sh
# new_service.sh SOURCE_DIR MOAT - `moat new service` end to end: copy the
# source tree into a scratch directory, refuse bad names there, generate
# the service "demo", build only its targets (and libmoat) with
# -DMOAT_TEST_HOOKS=ON and -Werror, check the sources are clang-format
# clean, and run the demo's generated unit and integration tests. Removes
# the scratch directory whatever happens.
set -eu
src=$1
moat=$2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/moat-new-service.XXXXXX")
trap '${MOAT_KEEP_SCRATCH:+:} rm -rf "$scratch"' EXIT
trap 'exit 1' INT TERM
tree=$scratch/tree
mkdir "$tree"

# The tracked and the untracked-but-not-ignored files: no build dirs.
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$src" ls-files -z --cached --others --exclude-standard |
        tar -C "$src" --null --ignore-failed-read -T - -cf - 2>/dev/null |
        tar -C "$tree" -xf -
else
    tar -C "$src" --exclude='./build*' --exclude=./var --exclude=./.git \
        -cf - . | tar -C "$tree" -xf -
fi
cd "$tree"
cp moat.json "$scratch/moat.json.before"

expect() { # expect STATUS MESSAGE-PART -- moat arguments...
    want=$1 part=$2
    shift 3
    set +e
    out=$("$moat" "$@" 2>&1)
    got=$?
    set -e
    if [ "$got" -ne "$want" ] || ! printf '%s' "$out" | grep -q -- "$part"; then
        echo "FAIL: moat $* exited $got (want $want) with:" >&2
        echo "$out" >&2
        exit 1
    fi
}
expect 2 "must start with a lowercase letter" -- new service 9lives
expect 2 "only lowercase letters and digits" -- new service dEmo
expect 2 "2 to 24 characters" -- new service d
expect 2 "2 to 24 characters" -- new service abcdefghijklmnopqrstuvwxy
expect 2 "is reserved" -- new service moat
expect 1 "already has a service named 'catalog'" -- new service catalog
expect 1 "tests/unit/test_db.c already exists" -- new service db
expect 2 "usage: moat new service" -- new widget demo
cmp moat.json "$scratch/moat.json.before" # refusals change nothing
test ! -e services/db

"$moat" new service demo
grep -q '"name": "demo"' moat.json
expect 1 "already has a service named 'demo'" -- new service demo

if command -v clang-format >/dev/null 2>&1; then
    clang-format --dry-run -Werror services/demo/*.c services/demo/*.h \
        tests/unit/test_demo.c tests/integration/test_demo.c
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOAT_TEST_HOOKS=ON \
    >"$scratch/cmake.log" 2>&1 || { cat "$scratch/cmake.log"; exit 1; }
cmake --build build -j2 --target moat-demo unit_test_demo it_test_demo
cd build
test "$(ctest -N -R '^(unit|integration)/test_demo$' | grep -c 'Test *#')" -eq 2
ctest -R '^(unit|integration)/test_demo$' --output-on-failure
