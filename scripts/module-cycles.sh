#!/usr/bin/env bash
# Prints the `crate::<module>` edges between caje's top-level modules and fails if they form
# a cycle.
#
# A top-level module is a file caje/src/<m>.rs or a folder caje/src/<m>/ (so everything under
# caje/src/cache/ is `cache`, everything under caje/src/manifest/ is `manifest`). An edge
# `a -> b` means some non-comment line in module a names `crate::b` (a `use`, or a path in
# code or in a test). Doc links in comments are not imports and are skipped. main.rs is the
# binary, not a module of the library, and lib.rs only declares the modules.
#
# Usage: scripts/module-cycles.sh [--check DOC] [path/to/caje/src]
#   --check DOC  also fail unless the `a -> b` lines between <!-- module-edges:begin --> and
#                <!-- module-edges:end --> in DOC (docs/architecture.md) are exactly these edges.
# Exit status: 0 without cycles, 1 with a cycle (tsort names the modules on it) or a stale
# DOC, 2 on a path form this script does not understand (`crate::{a, b}`).
set -euo pipefail

doc=
if [ "${1:-}" = --check ]; then
    doc=$(realpath "$2")
    shift 2
fi
src=${1:-"$(dirname "$0")/../caje/src"}
cd "$src"

# Grouped imports would hide their targets from the grep below: refuse rather than miss edges.
if grep -rnE --include='*.rs' '^[^/]*crate::\{' . >&2; then
    echo "module-cycles: grouped 'crate::{...}' paths are not understood; write one path per use" >&2
    exit 2
fi

edges=$(
    grep -rnoE --include='*.rs' '^[^/]*' . |
        awk -F: '
            # $1 is the file, $2 the line number; the rest is the line up to its first "/",
            # which drops // comments (and any code after a "/" on the same line, which has
            # never held a crate:: path in caje).
            {
                file = $1; sub(/^\.\//, "", file)
                if (file == "main.rs" || file == "lib.rs") next
                from = file; sub(/\/.*$/, "", from); sub(/\.rs$/, "", from)
                line = $0; sub(/^[^:]*:[^:]*:/, "", line)
                while (match(line, /crate::[a-z_][a-z0-9_]*/)) {
                    to = substr(line, RSTART + 7, RLENGTH - 7)
                    line = substr(line, RSTART + RLENGTH)
                    if (to != from) print from " " to
                }
            }' |
        sort -u
)

echo "$edges" | awk '{ print $1 " -> " $2 }'

# tsort prints "input contains a loop" and the modules on it, and exits non-zero, on a cycle.
if ! loops=$(echo "$edges" | tsort 2>&1 >/dev/null); then
    echo "$loops" >&2
    echo "module-cycles: the module graph has a cycle" >&2
    exit 1
fi
echo "module-cycles: no cycles among $(echo "$edges" | tr ' ' '\n' | sort -u | wc -l) modules"

if [ -n "$doc" ]; then
    documented=$(sed -n '/<!-- module-edges:begin -->/,/<!-- module-edges:end -->/p' "$doc" |
        grep -E '^[a-z_0-9]+ -> [a-z_0-9]+$' || true)
    if ! diff <(echo "$edges" | awk '{ print $1 " -> " $2 }') <(echo "$documented") >&2; then
        echo "module-cycles: $doc does not match the code (< code, > doc)" >&2
        exit 1
    fi
    echo "module-cycles: $doc matches the code"
fi
