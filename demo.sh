#!/usr/bin/env bash
# The caje demo: builds caje and slow_server, starts slow_server as the origin on
# 127.0.0.1:3000 and caje in front of it on 127.0.0.1:8080 (config.toml: a local cache dir
# and a local SQLite manifest), then shows one page going from MISS to HIT.
# Both keep running until Ctrl-C (set DEMO_EXIT=1 to stop right after the demo requests).
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --locked --bin caje --bin slow_server
work=$(mktemp -d)
target/release/slow_server --listen 127.0.0.1:3000 >"$work/origin.out" 2>"$work/origin.log" &
origin_pid=$!
target/release/caje --config config.toml --cache-dir "$work/cache" --db "$work/manifest.db" \
  >"$work/caje.out" 2>"$work/caje.log" &
caje_pid=$!
trap 'kill $caje_pid $origin_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

for _ in $(seq 1 100); do
  grep -q listening "$work/caje.out" 2>/dev/null && grep -q listening "$work/origin.out" && break
  if ! kill -0 $caje_pid 2>/dev/null || ! kill -0 $origin_pid 2>/dev/null; then
    echo "demo: a process failed to start (is port 3000 or 8080 in use?)" >&2
    cat "$work/origin.log" "$work/caje.log" >&2
    exit 1
  fi
  sleep 0.1
done
echo "origin: $(cat "$work/origin.out")"
echo "caje:   $(cat "$work/caje.out")"
echo
echo '$ curl -si http://127.0.0.1:8080/fast   # first request: a miss, the origin takes 1 s'
time curl -si http://127.0.0.1:8080/fast
echo
echo '$ curl -si http://127.0.0.1:8080/fast   # second request: a hit, served from disk'
time curl -si http://127.0.0.1:8080/fast
echo
sleep 0.3   # the manifest writes rows in batches (manifest.flush_interval_ms)
echo '$ curl -s http://127.0.0.1:8080/_caje/list'
curl -s http://127.0.0.1:8080/_caje/list
echo
[ "${DEMO_EXIT:-0}" = 1 ] && exit 0
echo "caje is serving on http://127.0.0.1:8080 (origin http://127.0.0.1:3000). Ctrl-C to stop."
wait
