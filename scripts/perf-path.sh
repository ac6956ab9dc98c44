#!/usr/bin/env bash
# One request path of the shared bench, by hand, with caje's CPU time per request and,
# optionally, a perf profile of caje: what docs/benchmarks.md ("Disk hits and fills without
# thread hops") measured with.
#
#   scripts/perf-path.sh MODE [SECONDS]        MODE: many | miss | hit | hit256
#   BIN=/path/to/caje scripts/perf-path.sh many     another build (default: target/release/caje)
#   BIN=nginx scripts/perf-path.sh many             nginx proxy_cache (the bench's config)
#   PERF=1 scripts/perf-path.sh miss 8              also perf record -F 999 --call-graph dwarf
#
# As the bench: an nginx origin serving random bytes (1k.bin, 256k.bin, many/0..9999.bin of
# 16 KiB, Cache-Control: public, max-age=3600), caje (or nginx) on CPU 0 with its cache on
# /dev/shm, wrk -t1 -c64 with the bench's wrk/bench.lua on CPU 1, all on loopback. `many` warms
# the 10,000 objects first; `miss` asks a new URL each time. Prints req/s, p50/p99, caje's
# utime+stime per request (from /proc/PID/stat over the measured run) and the load average.
# Needs nginx, wrk, python3 (and perf for PERF=1). Ports: PORT_BASE (default 17100) and +1.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/perf-path.sh many|miss|hit|hit256 [SECONDS]}
secs=${2:-10}
bench=${BENCH_DIR:-../shared/bench}
bin=${BIN:-$PWD/target/release/caje}
base=${PORT_BASE:-17100}
oport=$base
port=$((base + 1))
work=$(mktemp -d "${TMPDIR:-/dev/shm}/caje-perf-path.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/root/many" "$work/origin" "$work/proxy"
python3 - "$work/root" <<'PY'
import os, sys
root = sys.argv[1]
for i in range(10000):
    with open(f"{root}/many/{i}.bin", "wb") as f:
        f.write(os.urandom(16384))
for name, size in (("1k.bin", 1024), ("256k.bin", 262144)):
    with open(f"{root}/{name}", "wb") as f:
        f.write(os.urandom(size))
PY
cat > "$work/origin/nginx.conf" <<EOF
worker_processes 1;
pid $work/origin/nginx.pid;
error_log $work/origin/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    open_file_cache max=100000 inactive=300s;
    server {
        listen 127.0.0.1:$oport backlog=4096;
        root $work/root;
        location / { add_header Cache-Control "public, max-age=3600"; }
    }
}
EOF
nginx -p "$work/origin" -c "$work/origin/nginx.conf" -e "$work/origin/error.log" \
    -g 'daemon off; master_process off;' &
pids+=($!)

if [ "$bin" = nginx ]; then
    sed -e "s#{user}#$(id -un)#; s#{dir}#$work/proxy#g; s#{port}#$port#; s#{origin_addr}#127.0.0.1:$oport#" \
        "$bench/conf/proxy-cache.nginx.conf" > "$work/proxy/nginx.conf"
    taskset -c 0 nginx -p "$work/proxy" -c "$work/proxy/nginx.conf" -e "$work/proxy/error.log" \
        -g 'daemon off; master_process off;' > "$work/proxy/log" 2>&1 &
else
    taskset -c 0 "$bin" --listen "127.0.0.1:$port" --origin "http://127.0.0.1:$oport" \
        --cache-dir "$work/proxy/cache" --db "$work/proxy/manifest.db" > "$work/proxy/log" 2>&1 &
fi
pid=$!
pids+=("$pid")
for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/1k.bin" && break
    sleep 0.1
done

url=/1k.bin
case $mode in
    many)
        python3 - "$port" <<'PY'
import concurrent.futures as cf, http.client, sys
port = int(sys.argv[1])
def warm(first):
    c, bad = http.client.HTTPConnection("127.0.0.1", port, timeout=30), 0
    for i in range(first, 10000, 8):
        c.request("GET", f"/many/{i}.bin")
        r = c.getresponse()
        bad += r.status != 200 or len(r.read()) != 16384
    return bad
with cf.ThreadPoolExecutor(8) as pool:
    bad = sum(pool.map(warm, range(8)))
if bad:
    sys.exit(f"warming: {bad} bad responses")
PY
        export WRK_MODE=many WRK_N=10000 WRK_PATH_FMT=/many/%d.bin
        url=/many/0.bin ;;
    miss) export WRK_MODE=miss WRK_PATH=/1k.bin ;;
    hit) export WRK_MODE=single ;;
    hit256) export WRK_MODE=single; url=/256k.bin ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:$port$url"; done
run_wrk() {
    taskset -c 1 wrk -t1 -c64 --timeout 10s -d"$1"s -s "$bench/wrk/bench.lua" \
        "http://127.0.0.1:$port$url"
}
export WRK_NONCE=warm$RANDOM$RANDOM
run_wrk 2 > /dev/null
export WRK_NONCE=run$RANDOM$RANDOM
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks)
if [ -n "${PERF:-}" ]; then
    perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "perf-$mode.data" -- sleep "$secs" \
        > /dev/null 2>&1 &
    perf_pid=$!
fi
out=$(run_wrk "$secs")
t1=$(ticks)
[ -n "${PERF:-}" ] && wait "$perf_pid"
json=$(echo "$out" | sed -n 's/^WRKJSON //p')
python3 - "$json" "$t0" "$t1" "$(getconf CLK_TCK)" "$mode" <<'PY'
import json, sys
j, t0, t1, hz, mode = json.loads(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
secs = j["duration_us"] / 1e6
load = open("/proc/loadavg").read().split()[0]
print(f"{mode}: {j['requests'] / secs:.0f} req/s, p50 {j['p50_us'] / 1000:.2f} ms, "
      f"p99 {j['p99_us'] / 1000:.2f} ms, CPU {(t1 - t0) / hz / j['requests'] * 1e6:.1f} us/req, "
      f"errors {j['errors']}, load average {load}")
PY
[ -n "${PERF:-}" ] && echo "profile: perf-$mode.data (perf report -i perf-$mode.data --children --sort sym)"
exit 0
