#!/usr/bin/env bash
# The long form of caje/tests/convergence.rs: several seeds, a longer workload each.
#   scripts/convergence.sh [SECS_PER_SEED] [SEED...]      (defaults: 60 s; seeds 1 2 3)
# Each run prints its seed; a failure prints how to replay it (CONVERGENCE_SEED=<n>).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q -p caje -p slow_server --tests
failed=()
for seed in "${seeds[@]}"; do
  if CONVERGENCE_SEED="$seed" CONVERGENCE_SECS="$secs" \
      cargo test -q -p caje --test convergence -- --ignored --nocapture; then
    echo "seed $seed: ok"
  else
    echo "seed $seed: FAILED (replay: CONVERGENCE_SEED=$seed CONVERGENCE_SECS=$secs cargo test -p caje --test convergence -- --ignored --nocapture)"
    failed+=("$seed")
  fi
done
[ ${#failed[@]} -eq 0 ] || { echo "failed seeds: ${failed[*]}"; exit 1; }
