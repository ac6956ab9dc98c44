#!/usr/bin/env bash
# Runs the cache-tests.fyi conformance suite (RFC 9111) against a release build of caje and
# fails when the score drops below the committed threshold.
#
#   scripts/conformance.sh [--debug] [--no-build]
#
# --debug uses the dev profile (what the tests already built: no release build on CI);
# --no-build uses the binary as it is.
# The suite comes from ../shared/cache-tests (or $CACHE_TESTS_DIR); it is read-only on CI, so
# the script works on a temporary copy (npm ci in the copy needs node >= 18 and a registry).
# The suite's origin listens on 127.0.0.1:8000 (fixed by the suite); caje gets a free port.
# Prints the suite's summary line (`passed N, failed M, optional-failed K, total T`), then
# the failing tests. Exit status: 0 at or above scripts/conformance-threshold, 1 below it,
# 2 when the suite cannot run (port 8000 busy, no node, caje did not start).
# Env: CACHE_TESTS_DIR, KEEP=1 (keep the temporary directory and print its path).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
suite_src=${CACHE_TESTS_DIR:-../shared/cache-tests}
threshold=$(tr -dc '0-9' < scripts/conformance-threshold)

die() { echo "conformance: $*" >&2; exit 2; }
[[ -d $suite_src/suite ]] || die "no suite at $suite_src (set CACHE_TESTS_DIR)"
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required"
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_open 8000; then
  die "127.0.0.1:8000 is busy; the suite's origin needs it. Stop what listens there (ss -ltnp 'sport = :8000')."
fi

profile=release build=1
for arg in "$@"; do
  case $arg in
    --debug) profile=debug ;;
    --no-build) build=0 ;;
    *) die "unknown argument $arg" ;;
  esac
done
if (( build )); then
  if [[ $profile == release ]]; then
    cargo build --release --locked -p caje --bin caje
  else
    # The test command's package and feature set (`--workspace --all-features`), so that
    # after `.ci/run`'s tests this is a no-op instead of relinking caje with other features.
    cargo build --locked --workspace --all-features --bin caje
  fi
fi
bin=${CARGO_TARGET_DIR:-$root/target}/$profile/caje
[[ -x $bin ]] || die "no caje binary at $bin"

work=$(mktemp -d)
caje_pid=""
cleanup() {
  if [[ -n $caje_pid ]] && kill -0 "$caje_pid" 2>/dev/null; then
    kill "$caje_pid" 2>/dev/null || true
    wait "$caje_pid" 2>/dev/null || true
  fi
  if [[ ${KEEP:-} == 1 ]]; then echo "conformance: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

cp -r "$suite_src/." "$work/ct" && chmod -R u+w "$work/ct"
# Only the runtime dependencies (undici for the interim tests): the dev ones (a linter, a
# schema validator for the website export) triple the install time.
(cd "$work/ct/suite" &&
  npm ci --omit=dev --prefer-offline --no-audit --no-fund --loglevel=error >"$work/npm.log" 2>&1) ||
  { tail -20 "$work/npm.log" >&2; die "npm ci failed"; }

# A free port for caje: bind to port 0 and read the one it prints.
"$bin" --listen 127.0.0.1:0 --origin http://127.0.0.1:8000 \
  --cache-dir "$work/cache" --db "$work/manifest.db" >"$work/caje.out" 2>"$work/caje.err" &
caje_pid=$!
base=""
for _ in $(seq 1 200); do
  base=$(grep -o 'listening on http://[0-9.:]*' "$work/caje.out" | head -1 | sed 's/listening on //') || true
  [[ -n $base ]] && break
  kill -0 "$caje_pid" 2>/dev/null || { cat "$work/caje.err" >&2; die "caje exited"; }
  sleep 0.1
done
[[ -n $base ]] || die "caje did not print its address"

set +e
summary=$("$work/ct/run.sh" "$base" "$work/out.json" 2>"$work/run.err")
rc=$?
set -e
cat "$work/run.err" >&2
[[ $rc -eq 0 && -n $summary ]] || die "the suite did not run (run.sh exit $rc)"
echo "$summary"
node "$work/ct/failures.mjs" "$work/out.json" || true
passed=$(sed -n 's/^passed \([0-9]*\),.*/\1/p' <<<"$summary")
[[ -n $passed ]] || die "cannot read the summary line"
if (( passed < threshold )); then
  echo "conformance: FAIL: $passed passed, below the threshold of $threshold (scripts/conformance-threshold)" >&2
  exit 1
fi
echo "conformance: ok: $passed passed (threshold $threshold)"
