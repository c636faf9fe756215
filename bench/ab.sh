#!/usr/bin/env bash
# A/B of two builds or settings of the service on this noisy machine: both servers run at
# once (fresh databases ab_a and ab_b), and short wrk runs alternate between them (A B, then
# B A, ...), so that a slow minute of the machine hits both alike. Prints one line per run
# (round, side, req/s, p99 ms, service CPU µs per request), the medians per side and the
# per-round median of B/A, the figure to trust.
# Env: A_BIN, B_BIN (default target/release/analytics-service), A_ENV, B_ENV (extra settings,
#      e.g. B_ENV="APP_INGEST__WRITERS_PER_TABLE=2"), N=8 rounds, D=4s per run,
#      SCENARIO=analytics (metric analytics invalid noauth), CONNS=64,
#      ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rounds="${N:-8}"; duration="${D:-4s}"; scenario="${SCENARIO:-analytics}"; conns="${CONNS:-64}"
require_local_database
require_wrk

declare -A port=([A]=18091 [B]=18092) pid=()
declare -A path=([metric]=log_raw_metric [analytics]=log_raw_analytics [invalid]=log_raw_metric [noauth]=log_raw_metric)
work="$(mktemp -d)"
trap 'kill ${pid[A]:-} ${pid[B]:-} 2>/dev/null; rm -rf "$work"' EXIT
for side in A B; do
  bin_var="${side}_BIN"; env_var="${side}_ENV"
  # Each side its own admin port: in APP_ENV=prod both would bind 9464, and B would exit.
  start_service "${port[$side]}" "$(fresh_database "ab_${side,,}")" "$work/server_$side.log" \
    "${!bin_var:-}" APP_METRICS__ADMIN_PORT=$(( ${port[$side]} + 1000 )) ${!env_var:-}
  pid[$side]=$service_pid
done
token="$(bench_token)"
auth=(-H "Authorization: Bearer $token"); [[ $scenario == noauth ]] && auth=()

for round in $(seq 1 "$rounds"); do
  order="A B"; (( round % 2 == 0 )) && order="B A"
  for side in $order; do
    psql "${admin_url%/*}/ab_${side,,}" -qX -c 'truncate "AnalyticsMetrics", "AnalyticsDetails"'
    before=$(cpu_ticks "${pid[$side]}")
    line="$(BENCH_SCENARIO=$scenario BENCH_IDS="$work/ids" wrk -t 2 -c "$conns" -d "$duration" --timeout 5s \
            -s bench/wrk.lua "${auth[@]}" "http://127.0.0.1:${port[$side]}/api/analytics/${path[$scenario]}" 2>&1 | grep '^RESULT,')"
    IFS=, read -r _ rps _ p99 _ requests _ <<<"$line"
    ticks=$(( $(cpu_ticks "${pid[$side]}") - before ))
    awk -v r="$round" -v s="$side" -v rps="$rps" -v p99="$p99" -v t="$ticks" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%s %s %.0f %s %.1f\n", r, s, rps, p99, t * 1e6 / hz / n }'
  done
done | tee "$work/runs"
python3 - "$work/runs" <<'PY'
import statistics, sys
runs = [line.split() for line in open(sys.argv[1])]
rps = {side: [float(r[2]) for r in runs if r[1] == side] for side in "AB"}
cpu = {side: [float(r[4]) for r in runs if r[1] == side] for side in "AB"}
for side in "AB":
    print(f"{side}: median req/s {statistics.median(rps[side]):.0f}, service CPU {statistics.median(cpu[side]):.1f} us/req")
print(f"B/A per-round median: {statistics.median(b / a for a, b in zip(rps['A'], rps['B'])):.3f}")
PY
