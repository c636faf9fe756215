#!/usr/bin/env bash
# Legitimate load beside hostile clients (loopback only, bounded in time): wrk posts the
# analytics event (64 connections) once alone and once while bench/hostile.py runs NaN
# documents, dense-tree bodies (16 MiB gzip batches, 1 MiB dense metrics), anonymous
# 1 MiB bodies, idle sockets and slow senders. Prints CSV lines:
#   phase,rps,p50_ms,p99_ms,ok,peak_rss_mb
# and what the hostile clients got. Targets (issues 13 and 20): peak RSS <= 256 MB, legitimate
# req/s under attack >= 50 % of the quiet figure, p99 <= 100 ms.
# Env: DURATION=10s CONNS=64 PORT=18087 BUILD=0 (use the release binary as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

duration="${DURATION:-10s}"
conns="${CONNS:-64}"
port="${PORT:-18087}"
require_local_database
require_wrk
[[ "${BUILD:-1}" == 0 ]] || cargo build --release --quiet
db_url="$(fresh_database analytics_abuse)"
work="$(mktemp -d)"
start_service "$port" "$db_url" "$work/server.log" "" ${SERVER_ENV:-}
server=$service_pid
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
token="$(bench_token)"

legitimate() {
  local phase=$1 out line rss_kb
  echo 5 > "/proc/$server/clear_refs"   # restart the peak-RSS count (VmHWM)
  out="$(BENCH_SCENARIO=analytics timeout $(( ${duration%s} + 30 )) wrk -t 2 -c "$conns" \
         -d "$duration" --timeout 5s -s bench/wrk.lua -H "Authorization: Bearer $token" \
         "http://127.0.0.1:$port/api/analytics/log_raw_analytics" 2>&1)" || true
  line="$(grep '^RESULT,' <<<"$out")" || { echo "wrk failed: $out" >&2; exit 1; }
  IFS=, read -r _ rps p50 p99 ok _ _ <<<"$line"
  rss_kb="$(awk '/VmHWM/ {print $2}' "/proc/$server/status")"
  awk -v p="$phase" -v r="$rps" -v a="$p50" -v b="$p99" -v o="$ok" -v m="$rss_kb" \
      'BEGIN { printf "%s,%.0f,%s,%s,%s,%.1f\n", p, r, a, b, o, m / 1024 }'
}

echo "phase,rps,p50_ms,p99_ms,ok,peak_rss_mb"
legitimate quiet
timeout $(( ${duration%s} + 60 )) python3 bench/hostile.py "$port" "$(( ${duration%s} + 3 ))" "$token" \
  > "$work/hostile.csv" &
hostile=$!
sleep 2   # let the hostile clients ramp up
legitimate under_attack
wait $hostile || true
cat "$work/hostile.csv"
