#!/usr/bin/env bash
# The long form of the convergence test: several seeds, a longer workload each.
#   scripts/convergence.sh [--litefs] [SECS_PER_SEED] [SEED...]   (defaults: 60 s; seeds 1 2 3)
# Without --litefs: caje/tests/convergence.rs (3 nodes on one local manifest file).
# With --litefs: caje/tests/convergence_litefs.rs (3 nodes on a real two-node LiteFS cluster;
# needs root, /dev/fuse, fusermount3 and LITEFS_BIN, by default ../shared/litefs/litefs).
# Each run prints its seed; a failure prints how to replay it and keeps the nodes' directories.
set -euo pipefail
cd "$(dirname "$0")/.."
test_name=convergence
if [ "${1:-}" = "--litefs" ]; then
  test_name=convergence_litefs
  shift
  if [ -z "${LITEFS_BIN:-}" ] && [ -x ../shared/litefs/litefs ]; then
    LITEFS_BIN="$(cd ../shared/litefs && pwd)/litefs"
    export LITEFS_BIN
  fi
fi
secs="${1:-60}"
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q -p caje -p slow_server --test "$test_name" --bins
failed=()
for seed in "${seeds[@]}"; do
  # --include-ignored: the same whether the test is in the default run or not.
  if CONVERGENCE_SEED="$seed" CONVERGENCE_SECS="$secs" \
      cargo test -q -p caje --test "$test_name" -- --include-ignored --nocapture; then
    echo "seed $seed: ok"
  else
    echo "seed $seed: FAILED (replay: CONVERGENCE_SEED=$seed CONVERGENCE_SECS=$secs cargo test -p caje --test $test_name -- --include-ignored --nocapture)"
    failed+=("$seed")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed seeds: ${failed[*]}"; exit 1; }
echo "all ${#seeds[@]} seeds passed ($secs s each)"
