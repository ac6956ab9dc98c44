#!/usr/bin/env bash
# Cost of the access log and of the metrics endpoint on cached 1 KiB hits, in one run:
# the same release binary in three modes, interleaved round by round so that noise from other
# work on the machine falls on every mode alike:
#   off      log.access = "off", no metrics listener
#   log      log.access = a file (on the same disk as the cache), reopened never
#   metrics  metrics.listen on, scraped once a second during the run
# The order of the modes rotates from round to round. Each measurement: a fresh caje, the
# object fetched once (a miss) and then `wrk -t2 -c64 -d${DURATION}s` on it over loopback.
# Servers on CPU 0, wrk on CPU 1 (when taskset exists).
# Two figures per measurement: hits per second (wrk), and caje's CPU time per request (user +
# system, all its threads, from /proc/PID/stat over the wrk run). On a machine other work
# loads, the first swings with whatever else runs on CPU 0; the second hardly does, and a
# server bound by its CPU serves 1 / (CPU per request): its ratio is the cost that the loaded
# machine can still measure. The means are ratios of totals (all rounds' CPU / all requests).
# Usage: scripts/bench-ops.sh [ROUNDS] [DURATION]   (default 3 rounds of 10 s)
#   BENCH_BIN_DIR=DIR  use DIR/caje and DIR/slow_server instead of building (compare builds)
# Needs: apt-get install wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-10}
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin=$BENCH_BIN_DIR
else
  cargo build --release --locked --bin caje -p caje -p slow_server >&2
  bin=${CARGO_TARGET_DIR:-target}/release
fi
hz=$(getconf CLK_TCK)
work=$(mktemp -d "${TMPDIR:-/tmp}/caje-bench-ops.XXXXXX")
# Every process this script starts, by pid, until it is stopped: on any exit (the end, an
# error under `set -e`, Ctrl-C, SIGTERM) the EXIT trap stops the ones still running. The
# measurements run in this shell, not in `$(...)` subshells, so that their pids land here.
declare -A live=()
started() { live[$1]=1; }
stop() { # pid: SIGTERM, wait up to 5 s, then SIGKILL
  local p=$1
  [ -n "${live[$p]:-}" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  unset "live[$p]"
}
cleanup() {
  for p in "${!live[@]}"; do stop "$p"; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Not a shell function: `f ... &` would run the function in a subshell whose pid `$!` is, and
# killing that subshell would orphan the caje it started. taskset execs its command, so `$!`
# is the server's own pid.
cpu0=() cpu1=()
if command -v taskset >/dev/null; then cpu0=(taskset -c 0) cpu1=(taskset -c 1); fi
# utime + stime of a process (all its threads), in clock ticks; fields counted after the
# `(comm)` field, which may hold spaces.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

oport=$(free_port)
"${cpu0[@]}" "$bin/slow_server" --listen "127.0.0.1:$oport" >/dev/null 2>"$work/origin.err" &
started $!
sleep 0.5
path="/gen/bench?cc=max-age%3D3600&bytes=1024"

RPS= TICKS= REQS=
run_mode() { # mode round -> sets RPS (req/s), TICKS (caje's CPU during wrk), REQS (wrk's count)
  local mode=$1 round=$2 dir="$work/$1-$2" port mport extra=""
  mkdir -p "$dir"
  port=$(free_port)
  case $mode in
    log) extra=$'[log]\naccess = "'"$dir/access.log"$'"' ;;
    metrics) mport=$(free_port); extra=$'[metrics]\nlisten = "127.0.0.1:'"$mport"$'"' ;;
  esac
  printf '[[origins]]\nhost = "*"\nurl = "http://127.0.0.1:%s"\n%s\n' "$oport" "$extra" >"$dir/caje.toml"
  "${cpu0[@]}" "$bin/caje" --config "$dir/caje.toml" --listen "127.0.0.1:$port" --cache-dir "$dir/cache" \
    --db "$dir/manifest.db" >/dev/null 2>"$dir/caje.err" &
  local cpid=$!
  started "$cpid"
  for _ in $(seq 100); do curl -sf -m 2 -o /dev/null "http://127.0.0.1:$port/_caje/stats" && break; sleep 0.1; done
  curl -sf -m 5 -o /dev/null "http://127.0.0.1:$port$path"
  curl -sf -m 5 -o /dev/null "http://127.0.0.1:$port$path"
  local scraper=""
  if [ "$mode" = metrics ]; then
    (while true; do curl -sf -m 2 -o /dev/null "http://127.0.0.1:$mport/metrics" || true; sleep 1; done) &
    scraper=$!
    started "$scraper"
  fi
  local t0
  t0=$(cpu_ticks "$cpid")
  "${cpu1[@]}" wrk -t2 -c64 -d"${duration}s" "http://127.0.0.1:$port$path" >"$dir/wrk.out" &
  local wpid=$!
  started "$wpid"
  wait "$wpid"
  unset "live[$wpid]"
  TICKS=$(($(cpu_ticks "$cpid") - t0))
  RPS=$(awk '/^Requests\/sec/ {print $2}' "$dir/wrk.out")
  REQS=$(awk '/requests in/ {print $1}' "$dir/wrk.out")
  [ -n "$scraper" ] && stop "$scraper"
  if [ "$mode" = log ]; then
    local lines dropped
    dropped=$(curl -s -m 5 "http://127.0.0.1:$port/_caje/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["live"]["access_log"]["dropped"])')
    # SIGTERM writes what the log still buffers (at most 100 ms of lines) before the exit.
    stop "$cpid"
    lines=$(wc -l <"$dir/access.log")
    echo "  log: $lines lines written, $dropped dropped" >&2
  fi
  stop "$cpid"
}

declare -A sum ticks reqs
for mode in off log metrics; do sum[$mode]=0 ticks[$mode]=0 reqs[$mode]=0; done
echo "round mode req/s cpu_us_per_req"
modes=(off log metrics)
for r in $(seq "$rounds"); do
  echo "  load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  # The order rotates every round, so that no mode always runs first (or after another).
  for i in 0 1 2; do
    mode=${modes[$(((i + r) % 3))]}
    run_mode "$mode" "$r"
    echo "$r $mode $RPS $(python3 -c "print(f'{$TICKS / $hz * 1e6 / $REQS:.1f}')")"
    sum[$mode]=$(python3 -c "print(${sum[$mode]} + $RPS)")
    ticks[$mode]=$((${ticks[$mode]} + TICKS))
    reqs[$mode]=$((${reqs[$mode]} + REQS))
  done
done
echo "  load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for mode in off log metrics; do
  python3 -c "
m = ${sum[$mode]} / $rounds; b = ${sum[off]} / $rounds
c = ${ticks[$mode]} / $hz * 1e6 / ${reqs[$mode]}; co = ${ticks[off]} / $hz * 1e6 / ${reqs[off]}
print(f'mean {\"$mode\":8s} {m:8.0f} req/s {m/b:.3f} x off (cost {100*(1-m/b):+.1f} %) | CPU {c:6.1f} us/req {c/co:.3f} x off (cost {100*(c/co-1):+.1f} %)')"
done
