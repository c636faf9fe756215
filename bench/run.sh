#!/usr/bin/env bash
# One-command benchmark of analytics-service on this machine (loopback only, bounded).
# Builds the release binary, starts it on a fresh PostgreSQL database, runs wrk scenarios
# at several connection counts and prints one CSV line per run:
#   scenario,conns,rps,rows_per_s,p50_ms,p99_ms,peak_rss_mb,ok,rows,missing_ids,in_flight_rows,check,
#   server_us_per_req,pg_us_per_req
# ok = responses with 200; missing_ids = ids answered with 200 that are not in the table;
# in_flight_rows = rows beyond those of the 200s: wrk stops at the deadline without reading
# the answers of requests still in flight (at most one per connection), which were stored.
# check = ok when missing_ids is 0 and in_flight_rows is between 0 and one request per
# connection.
# server_us_per_req / pg_us_per_req = CPU time (user + system) the service / all PostgreSQL
# processes spent during the run, divided by the requests wrk sent: on a machine where wrk,
# the service and PostgreSQL share the cores, this is what a change to the hot path moves.
# Env: DURATION=6s CONNS="16 64 256" SCENARIOS="metric analytics batch100 invalid noauth"
#      REPS=1 PORT=18086 ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
#      SERVER_ENV="APP_INGEST__WRITERS_PER_TABLE=2 ..." (extra settings for the server)
# The per-user rate limit is turned off: every request comes from one bench user.
#      BUILD=0 (use the release binary as it is)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

duration="${DURATION:-6s}"
conns_list="${CONNS:-16 64 256}"
scenarios="${SCENARIOS:-metric analytics batch100 invalid noauth}"
reps="${REPS:-1}"
port="${PORT:-18086}"
require_local_database
require_wrk
[[ "${BUILD:-1}" == 0 ]] || cargo build --release --quiet
db_url="$(fresh_database analytics_bench)"

work="$(mktemp -d)"
start_service "$port" "$db_url" "$work/server.log" "" ${SERVER_ENV:-}
server=$service_pid
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
token="$(bench_token)"

declare -A path=([metric]=log_raw_metric [analytics]=log_raw_analytics [batch100]=log_raw_metric/batch
                 [invalid]=log_raw_metric [noauth]=log_raw_metric)
declare -A table=([metric]=AnalyticsMetrics [analytics]=AnalyticsDetails [batch100]=AnalyticsMetrics
                  [invalid]=AnalyticsMetrics [noauth]=AnalyticsMetrics)
declare -A rows_per_ok=([metric]=1 [analytics]=1 [batch100]=100 [invalid]=0 [noauth]=0)

sql() { psql "$db_url" -qXtA -c "$1"; }
# Of all PostgreSQL processes alive now: a backend started during a run counts from zero.
postgres_ticks() { cpu_ticks $(pgrep -u postgres postgres || true); }

echo "scenario,conns,rps,rows_per_s,p50_ms,p99_ms,peak_rss_mb,ok,rows,missing_ids,in_flight_rows,check,server_us_per_req,pg_us_per_req"
for rep in $(seq 1 "$reps"); do
  for conns in $conns_list; do
    for sc in $scenarios; do
      sql 'truncate "AnalyticsMetrics", "AnalyticsDetails"'
      echo 5 > "/proc/$server/clear_refs"   # restart the peak-RSS count (VmHWM)
      server_ticks=$(cpu_ticks $server); pg_ticks=$(postgres_ticks)
      auth=(-H "Authorization: Bearer $token"); [[ $sc == noauth ]] && auth=()
      out="$(BENCH_SCENARIO=$sc BENCH_IDS="$work/ids" timeout $(( ${duration%s} + 30 )) \
             wrk -t 2 -c "$conns" -d "$duration" --timeout 5s -s bench/wrk.lua "${auth[@]}" \
             "http://127.0.0.1:$port/api/analytics/${path[$sc]}" 2>&1)" || true
      line="$(grep '^RESULT,' <<<"$out" || true)"
      [[ -n "$line" ]] || { echo "wrk failed for $sc: $out" >&2; exit 1; }
      IFS=, read -r _ rps p50 p99 ok requests sock_errors <<<"$line"
      server_ticks=$(( $(cpu_ticks $server) - server_ticks )); pg_ticks=$(( $(postgres_ticks) - pg_ticks ))
      rss_kb="$(awk '/VmHWM/ {print $2}' "/proc/$server/status")"
      rows="$(sql "select count(*) from \"${table[$sc]}\"")"
      sql 'create table if not exists bench_ids (id text)' 2>/dev/null; sql 'truncate bench_ids'
      psql "$db_url" -qX -c "\\copy bench_ids from '$work/ids'"
      missing="$(sql "select count(*) from bench_ids b where not exists (select 1 from \"${table[$sc]}\" t where t.id = b.id)")"
      extra=$(( rows - ok * ${rows_per_ok[$sc]} ))
      check=ok
      (( missing == 0 && extra >= 0 && extra <= conns * ${rows_per_ok[$sc]} )) || check=BAD
      awk -v s="$sc" -v c="$conns" -v r="$rps" -v rows="$rows" -v d="${duration%s}" -v p50="$p50" \
          -v p99="$p99" -v rss="$rss_kb" -v ok="$ok" -v m="$missing" -v x="$extra" -v chk="$check" \
          -v st="$server_ticks" -v pt="$pg_ticks" -v n="$requests" -v hz="$(getconf CLK_TCK)" \
          'BEGIN { printf "%s,%s,%.0f,%.0f,%s,%s,%.1f,%s,%s,%s,%s,%s,%.1f,%.1f\n", s, c, r, rows / d, p50, p99, rss / 1024, ok, rows, m, x, chk, st * 1e6 / hz / n, pt * 1e6 / hz / n }'
    done
  done
done
