#!/usr/bin/env bash
# Fails when a tracked (or new, untracked) C file is not clang-format clean.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$( (git ls-files '*.c' '*.h'; git ls-files --others --exclude-standard '*.c' '*.h') | sort -u)
[ -z "$files" ] && exit 0
bad=0
for f in $files; do
    [ -f "$f" ] || continue
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "format-check: $f is not clang-format clean (run: make format)" >&2
        bad=1
    fi
done
exit $bad
