#!/usr/bin/env bash
# Request coalescing under a thundering herd: 200 clients send a GET for one cold URL at the
# same moment; the origin answers after 500 ms. Prints, per round, coalesce.py's JSON line
# (max_ms is the slowest client, measured from its own send) and the origin fetches it cost.
#
#   scripts/coalesce.sh [ROUNDS] [N]        # defaults: 3 rounds, 200 clients
#
# Uses the release build in $CARGO_TARGET_DIR (or ./target): build it first with
# `cargo build --release --locked -p caje --bin caje`. caje runs on CPU 0 and the client on
# CPU 1, as in the shared benchmark (../shared/bench: slow_origin.py, coalesce.py); the cache
# and manifest live in a temporary directory under $TMPDIR (use TMPDIR=/dev/shm to keep the
# disk out of the figure). Ports: $COALESCE_PORT (origin) and the next one (caje), default
# 7311. Env: SIZE (origin body bytes, default 1024), DELAY_MS (default 500), CAJE_BIN (another
# binary, e.g. main's, to compare), RT=1 (root: run caje and the client SCHED_FIFO 10 and the
# origin SCHED_FIFO 20, so that other work on a shared machine does not preempt them; the
# origin stands for another machine, so it is never queued behind caje or the client).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} n=${2:-200}
bench=${BENCH_DIR:-../shared/bench}
bin=${CAJE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/caje}
rt_origin=() rt=()
if [[ ${RT:-0} == 1 ]]; then rt_origin=(chrt -f 20) rt=(chrt -f 10); fi
delay=${DELAY_MS:-500} size=${SIZE:-1024}
oport=${COALESCE_PORT:-7311} cport=$(( ${COALESCE_PORT:-7311} + 1 ))
[[ -x $bin ]] || { echo "coalesce: no release build at $bin" >&2; exit 2; }
w=$(mktemp -d)
opid="" cpid=""
cleanup() {
  for p in $cpid $opid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$w"
}
trap cleanup EXIT
${rt_origin[@]+"${rt_origin[@]}"} python3 "$bench/slow_origin.py" --port "$oport" --delay-ms "$delay" --size "$size" >"$w/o.log" 2>&1 &
opid=$!
taskset -c 0 ${rt[@]+"${rt[@]}"} "$bin" --listen "127.0.0.1:$cport" --origin "http://127.0.0.1:$oport" \
  --cache-dir "$w/cache" --db "$w/m.db" >"$w/c.log" 2>&1 &
cpid=$!
ready() {
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "coalesce: $1 did not answer within 10 s" >&2
  exit 2
}
ready "http://127.0.0.1:$oport/count"
ready "http://127.0.0.1:$cport/_caje/stats"
for r in $(seq 1 "$rounds"); do
  before=$(curl -s "http://127.0.0.1:$oport/count")
  out=$(taskset -c 1 ${rt[@]+"${rt[@]}"} python3 "$bench/coalesce.py" --port "$cport" --path "/c$r-$$.bin" --n "$n")
  after=$(curl -s "http://127.0.0.1:$oport/count")
  max=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['max_ms'])" "$out")
  ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$max" "$delay")
  echo "round $r: $out origin_fetches=$((after - before)) max/delay=${ratio}x"
done
