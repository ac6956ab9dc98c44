#!/usr/bin/env bash
# Runs the shared side-by-side benchmark (../shared/bench: caje vs Varnish, nginx proxy_cache
# and nginx serving static files) against a release build of caje.
# Needs: apt-get install nginx varnish wrk. Extra arguments go to bench/run.sh, e.g.
#   scripts/bench.sh --quick
#   scripts/bench.sh --scenarios hit,many --systems target,nginx
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH_DIR:-../shared/bench}
cargo build --release --locked --bin caje
# Caches on tmpfs: ext4 without a journal is slow to create files right after mass deletes
# (see the bench README), which would measure the file system rather than the proxies.
export TMPDIR=${TMPDIR:-/dev/shm}
export TARGET_CMD="$PWD/target/release/caje --listen 127.0.0.1:{port} --origin {origin} --cache-dir {dir}/cache --db {dir}/manifest.db"
exec "$bench/run.sh" --target-name caje "$@"
