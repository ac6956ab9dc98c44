#!/usr/bin/env bash
# Disk footprint of small pages: fills N pages of 1 KiB one at a time (one keep-alive
# connection, one request after the other) through a release caje in front of slow_server,
# waits until all are stored, then reports `du -sk` of the cache dir and what it holds.
#   scripts/footprint.sh [N]                     # default N=10000
#   CAJE_BIN=/path/to/other/caje scripts/footprint.sh 10000   # e.g. an older build
#   BYTES=4096 scripts/footprint.sh              # another page size
# The cache dir is made under $TMPDIR (default /tmp). Directories count in `du` on ext4
# (4 KiB each; the 256 x 256 shard dirs) but take no blocks on tmpfs: both are reported.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
bytes=${BYTES:-1024}
caje=${CAJE_BIN:-$PWD/target/release/caje}
origin_bin=${SLOW_SERVER_BIN:-$PWD/target/release/slow_server}
if [[ -z ${CAJE_BIN:-} || -z ${SLOW_SERVER_BIN:-} ]]; then
  cargo build --release --locked --bin caje --bin slow_server
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/caje-footprint.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts "$@" (in this shell, so its pid is kept for the cleanup) with stdout to $1, and
# waits for its "listening on http://ADDR" line.
start() {
  local log=$1; shift
  "$@" >"$log" 2>"$log.stderr" &
  pids+=($!)
  for _ in $(seq 200); do
    grep -q 'listening on http://' "$log" && return
    sleep 0.05
  done
  echo "did not start: $*" >&2; cat "$log.stderr" >&2; exit 1
}
addr() { grep -o 'http://[0-9.:]*' "$1" | head -1; }

start "$work/origin.log" "$origin_bin" --listen 127.0.0.1:0
origin=$(addr "$work/origin.log")
token=footprint
start "$work/caje.log" "$caje" --listen 127.0.0.1:0 --origin "$origin" \
  --cache-dir "$work/cache" --db "$work/manifest.db" --admin-token "$token"
proxy=$(addr "$work/caje.log")

# One curl, one connection, the pages one after the other.
for i in $(seq "$n"); do
  printf 'url = "%s/gen/page%d?cc=max-age%%3D86400&bytes=%d"\noutput = "/dev/null"\n' \
    "$proxy" "$i" "$bytes"
done >"$work/urls"
start_s=$(date +%s.%N)
curl -s -K "$work/urls"
fill_s=$(echo "$(date +%s.%N) - $start_s" | bc)

stored=0
for _ in $(seq 600); do
  stored=$(curl -s -H "Authorization: Bearer $token" "$proxy/_caje/stats" |
    grep -o '"entries":[0-9]*' | head -1 | cut -d: -f2)
  [[ ${stored:-0} -ge $n ]] && break
  sleep 0.1
done

cache=$work/cache
files=$(find "$cache" -type f -name '*.entry' -o -type f -name '*.meta' -o -type f -name '*.body' | wc -l)
dirs=$(find "$cache" -mindepth 1 -type d | wc -l)
file_kib=$(find "$cache" -type f -printf '%b\n' | awk '{s += $1} END {print int(s / 2)}')
apparent=$(find "$cache" -type f \( -name '*.entry' -o -name '*.meta' -o -name '*.body' \) -printf '%s\n' |
  awk '{s += $1} END {if (NR) print int(s / NR)}')
du_kib=$(du -sk "$cache" | cut -f1)
fs=$(stat -f -c %T "$cache")
echo "pages=$n bytes=$bytes entries=$stored fill_s=$(printf '%.1f' "$fill_s") fs=$fs"
echo "du -sk cache dir: $du_kib KiB ($(echo "scale=2; $du_kib / $n" | bc) KiB per page)"
echo "files: $files entry files, $file_kib KiB ($(echo "scale=2; $file_kib / $n" | bc) KiB per page); $dirs directories"
echo "body bytes: $((n * bytes / 1024)) KiB; mean file size $apparent bytes"
