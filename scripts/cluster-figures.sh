#!/usr/bin/env bash
# The failover and consistency figures of docs/cluster.md, measured on a real two-node LiteFS
# cluster (../shared/litefs/: LiteFS v0.5.14 and cluster.sh; needs root, /dev/fuse, fuse3).
# Runs the ignored tests `cluster_figures` (populate fills from the origin) and
# `peer_fill_figures` (populate.source = "peer": the origin shield) of
# caje/tests/real_litefs_cluster.rs, one after the other; each starts its own cluster in a temp
# LITEFS_HOME on free ports, and stops and unmounts it at the end.
# Prints lines starting with FIGURE. Takes about three minutes after the build.
#
#   scripts/cluster-figures.sh            # debug build (what the figures in docs/cluster.md used)
#   scripts/cluster-figures.sh --release  # release build
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${LITEFS_BIN:-}" ] && [ -x ../shared/litefs/litefs ]; then
  LITEFS_BIN="$(cd ../shared/litefs && pwd)/litefs"
  export LITEFS_BIN
fi
cargo test "$@" -p caje --all-features --test real_litefs_cluster -- \
  --ignored --exact cluster_figures peer_fill_figures --test-threads=1 --nocapture 2>&1 | grep -E '^(FIGURE|SKIP|real-litefs|test |thread )'
