#!/usr/bin/env bash
# Stream mode (NATS JetStream) benchmark, in one sitting, loopback only, every run bounded.
# Prints three markdown tables:
#  1. capture: req/s and latency of the analytics (and metric) endpoint, wrk at $CONNS
#     connections for $DURATION s after a $WARMUP s warm-up, in three modes:
#       direct  the default sink (group commit into PostgreSQL; a 200 means committed)
#       r1      stream mode, one nats-server, stream replicas 1
#       r3      stream mode, a 3-node JetStream cluster, stream replicas 3
#     Stream-mode capture runs WITHOUT a loader (loader.enabled=false): capture alone.
#  2. loader: for each run of $LOADER_RUNS, a capture-only run leaves >= $LOAD_ROWS
#     analytics rows in the stream (a work queue: loaded rows leave it, so it is filled
#     before every run); then `analytics-service load` into a fresh database is timed
#     until every row is loaded. Beside it, the ceiling the rig
#     measures (bench/pgbench.sh's method): pgbench with one 100-row INSERT per
#     transaction, here into "AnalyticsDetails" with the same ~300-byte `data` (jsonb).
#  3. lag: capture (stream, one node) and a separate loader; wrk sends a constant rate of
#     $LAG_RATE_PCT % of step 1's r1 analytics req/s; per row, "createdAt" (set at capture,
#     ms, UTC) vs the moment the loader's insert wrote it (a column `loaded_at` added to
#     this bench's own table with default clock_timestamp(): now() would be the start of
#     the transaction).
# CPU columns: cores used (of the machine's 2, shared by wrk, the service, the
# nats-servers and PostgreSQL) during the measured run, from /proc; `other` is the rest of
# the machine's busy time (another build or test running beside the bench shows there).
# Before each measured run the bench waits up to $QUIET_WAIT s for the machine to be idle.
#
# Env: BUILD=0 (use $BIN as it is)  BIN=target/release/analytics-service
#      DURATION=15 WARMUP=3 CONNS=64 MODES="direct r1 r3" ENDPOINTS="analytics metric"
#      LOAD_ROWS=200000 FILL_MAX=120 LOADER_RUNS="500 1000 500:nossl" LOAD_MAX=300
#        (a run is loader.batch, optionally :nossl = the loader's DATABASE_URL with
#        sslmode=disable: a diagnostic, see docs/PERFORMANCE.md)
#      PG_DURATION=6 PG_CLIENTS="1 16" LAG_RATE_PCT=50 LAG_RATE= (req/s; default from step 1)
#      LAG_DURATION=20 LAG_DRAIN_MAX=180 STEPS="capture loader lag" BASE_PORT=19100 QUIET_WAIT=30
#      LAG_LOADER_PARAMS= (appended to the lag step's loader DATABASE_URL, e.g. ?sslmode=disable)
#      LOG_DIR= (keep the processes' logs there)
#      ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

duration="${DURATION:-15}"
warmup="${WARMUP:-3}"
conns="${CONNS:-64}"
modes="${MODES:-direct r1 r3}"
endpoints="${ENDPOINTS:-analytics metric}"
load_rows="${LOAD_ROWS:-200000}"
fill_max="${FILL_MAX:-120}"
loader_runs="${LOADER_RUNS:-500 1000 500:nossl}"
load_max="${LOAD_MAX:-300}"
pg_duration="${PG_DURATION:-6}"
pg_clients="${PG_CLIENTS:-1 16}"
lag_rate_pct="${LAG_RATE_PCT:-50}"
lag_duration="${LAG_DURATION:-20}"
steps="${STEPS:-capture loader lag}"
bin="${BIN:-target/release/analytics-service}"
nats_bin="${NATS_SERVER:-/usr/sbin/nats-server}"

# Ports: service, its /metrics (APP_ENV=prod serves /metrics on an admin port only), the
# loader's probes and /metrics, then three nats-servers' client, cluster and monitoring ports.
base="${BASE_PORT:-19100}"
svc_port=$base; svc_admin=$((base + 1)); loader_port=$((base + 2))
nats_client=($((base + 10)) $((base + 11)) $((base + 12)))
nats_cluster=($((base + 20)) $((base + 21)) $((base + 22)))
nats_mon=($((base + 30)) $((base + 31)) $((base + 32)))

require_local_database
require_wrk
[[ -x $nats_bin ]] || { echo "nats-server missing at $nats_bin" >&2; exit 2; }
for p in $svc_port $svc_admin $loader_port "${nats_client[@]}" "${nats_cluster[@]}" "${nats_mon[@]}"; do
  ! ss -Htln "sport = :$p" | grep -q . || { echo "port $p is taken: set BASE_PORT" >&2; exit 2; }
done
[[ "${BUILD:-1}" == 0 ]] || cargo build --release --quiet
[[ -x $bin ]] || { echo "no binary at $bin (BIN=...)" >&2; exit 2; }

work="$(mktemp -d /tmp/bench-stream.XXXXXX)"
capture_db=analytics_stream_bench
load_db=analytics_stream_load
pids=()        # every process this script started, stopped by the trap
nats_pids=()   # the nats-servers of the current mode

cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  psql "$admin_url" -qX -c "drop database if exists $capture_db with (force)" \
    -c "drop database if exists $load_db with (force)" >/dev/null 2>&1 || true
  [[ -z ${LOG_DIR:-} ]] || { mkdir -p "$LOG_DIR"; cp "$work"/*.log "$LOG_DIR"/ 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# stop PID: SIGTERM, up to 15 s for a graceful exit, then SIGKILL.
stop() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 150); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# wait_http URL SECONDS PID: until URL answers 2xx; fails when PID exits or time runs out.
wait_http() {
  local url=$1 secs=$2 pid=$3
  for _ in $(seq 1 $((secs * 20))); do
    curl -sf -o /dev/null --max-time 1 "$url" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

sql() { psql "$1" -qXtA -c "$2"; }

# --- NATS ---------------------------------------------------------------------------

# nats_start N [ARGS...]: nats-server number N with JetStream and a fresh store directory.
nats_start() {
  local n=$1; shift
  rm -rf "$work/nats$n"
  "$nats_bin" -a 127.0.0.1 -p "${nats_client[$n]}" -m "${nats_mon[$n]}" -js -sd "$work/nats$n" \
    --server_name "n$n" "$@" > "$work/nats$n.log" 2>&1 &
  pids+=($!); nats_pids+=($!)
}

# nats_single: one server, JetStream on its own (stream replicas 1).
nats_single() {
  nats_start 0
  wait_http "http://127.0.0.1:${nats_mon[0]}/healthz" 20 "${nats_pids[0]}" \
    || { echo "nats-server did not start: $(tail -3 "$work/nats0.log")" >&2; exit 1; }
  nats_url="nats://127.0.0.1:${nats_client[0]}"
}

# nats_cluster: three servers routed to each other; ready once every node is healthy and
# the JetStream meta group has a leader (R3 streams cannot be made before).
nats_cluster() {
  local routes="nats://127.0.0.1:${nats_cluster[0]},nats://127.0.0.1:${nats_cluster[1]},nats://127.0.0.1:${nats_cluster[2]}"
  local n
  for n in 0 1 2; do
    nats_start $n --cluster_name bench --cluster "nats://127.0.0.1:${nats_cluster[$n]}" --routes "$routes"
  done
  for n in 0 1 2; do
    wait_http "http://127.0.0.1:${nats_mon[$n]}/healthz" 30 "${nats_pids[$n]}" \
      || { echo "nats-server n$n did not start: $(tail -3 "$work/nats$n.log")" >&2; exit 1; }
  done
  for _ in $(seq 1 100); do
    curl -s "http://127.0.0.1:${nats_mon[0]}/jsz" | grep -Eq '"leader": *"n[0-9]"' && break
    sleep 0.1
  done
  nats_url="nats://127.0.0.1:${nats_client[0]},nats://127.0.0.1:${nats_client[1]},nats://127.0.0.1:${nats_client[2]}"
}

nats_stop() {
  local pid
  for pid in "${nats_pids[@]}"; do stop "$pid"; done
  nats_pids=()
  rm -rf "$work"/nats?
}

js() { python3 bench/stream_js.py "$1" "${nats_client[0]}" "${@:2}"; }

# --- the service ----------------------------------------------------------------------

# start_capture MODE DATABASE_URL: `serve` in MODE (direct, r1, r3), never with a loader;
# its pid in $capture_pid. The per-user rate limit is off: every request is the bench user's.
start_capture() {
  local mode=$1 db_url=$2 stream_env=() attempt
  case $mode in
    r1) stream_env=(APP_INGEST__SINK=nats NATS_URL="$nats_url" APP_NATS__STREAM_REPLICAS=1 APP_LOADER__ENABLED=false) ;;
    r3) stream_env=(APP_INGEST__SINK=nats NATS_URL="$nats_url" APP_NATS__STREAM_REPLICAS=3 APP_LOADER__ENABLED=false) ;;
  esac
  for attempt in 1 2 3; do   # a just-formed cluster may refuse the first stream creation
    env APP_ENV=prod HOST=127.0.0.1 PORT="$svc_port" APP_METRICS__ADMIN_PORT="$svc_admin" \
      JWT_VERIFY_KEY="$bench_key" DATABASE_URL="$db_url" RUST_LOG=warn \
      APP_RATE_LIMIT__USER_PER_SECOND=0 "${stream_env[@]}" "$bin" > "$work/capture-$mode.log" 2>&1 &
    capture_pid=$!; pids+=($capture_pid)
    wait_http "http://127.0.0.1:$svc_port/readyz" 30 $capture_pid && return 0
    stop $capture_pid
    log "capture ($mode) not ready, attempt $attempt: $(tail -2 "$work/capture-$mode.log")"
    sleep 2
  done
  exit 1
}

# start_loader BATCH DATABASE_URL: `analytics-service load`, its probes and /metrics on
# $loader_port; returns once /readyz answers (the loader task is spawned right after the
# listener is bound); its pid in $loader_pid.
start_loader() {
  env APP_ENV=prod HOST=127.0.0.1 PORT="$loader_port" DATABASE_URL="$2" RUST_LOG=warn \
    JWT_VERIFY_KEY="$bench_key" \
    NATS_URL="$nats_url" APP_LOADER__BATCH="$1" APP_LOADER__LAG_INTERVAL_MS=1000 \
    "$bin" load > "$work/loader-$1.log" 2>&1 &
  loader_pid=$!; pids+=($loader_pid)
  wait_http "http://127.0.0.1:$loader_port/readyz" 30 $loader_pid \
    || { echo "loader did not start: $(tail -3 "$work/loader-$1.log")" >&2; exit 1; }
}

# prom URL METRIC TABLE: the sample of METRIC{table="TABLE"} (0 when absent).
prom() {
  curl -s --max-time 2 "$1" | awk -v m="$2" -v t="table=\"$3\"" \
    'index($1, m "{") == 1 && index($1, t) { v = $2 } END { print v + 0 }'
}

# --- CPU accounting ---------------------------------------------------------------------

# machine_ticks: "busy steal" jiffies of the whole machine since boot (/proc/stat).
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat; }
pg_pids() { pgrep -u postgres postgres || true; }

# CPU ticks of this shell's reaped children (cutime + cstime): wrk, once it has exited.
children_ticks() { local stat=($(sed 's/.*) //' /proc/$$/stat)); echo $(( stat[13] + stat[14] )); }

# cpu_begin PID / cpu_end: cores used between the two calls by the service (PID), the
# nats-servers, all PostgreSQL processes, wrk, and the rest of the machine ("other":
# anything else running, e.g. a build; the VM's steal is not in it) -> $cpu_cols.
cpu_begin() {
  cpu_svc_pid=$1
  cpu_t0=$(date +%s.%N); cpu_s0=$(cpu_ticks "$cpu_svc_pid"); cpu_n0=$(cpu_ticks "${nats_pids[@]}")
  cpu_p0=$(cpu_ticks $(pg_pids)); cpu_w0=$(children_ticks); read -r cpu_m0 cpu_st0 < <(machine_ticks)
}
cpu_end() {
  local t1 s1 n1 p1 w1 m1 st1
  t1=$(date +%s.%N); s1=$(cpu_ticks "$cpu_svc_pid"); n1=$(cpu_ticks "${nats_pids[@]}")
  p1=$(cpu_ticks $(pg_pids)); w1=$(children_ticks); read -r m1 st1 < <(machine_ticks)
  cpu_cols=$(awk -v hz="$(getconf CLK_TCK)" -v dt="$(awk -v a="$cpu_t0" -v b="$t1" 'BEGIN{print b-a}')" \
    -v s=$((s1 - cpu_s0)) -v n=$((n1 - cpu_n0)) -v p=$((p1 - cpu_p0)) -v w=$((w1 - cpu_w0)) \
    -v m=$((m1 - cpu_m0)) -v st=$((st1 - cpu_st0)) \
    'BEGIN { f = hz * dt; o = m - s - n - p - w; if (o < 0) o = 0
             printf "%.2f / %.2f / %.2f / %.2f / %.2f", s/f, n/f, p/f, w/f, o/f }')
}

# wait_quiet: up to $QUIET_WAIT s for the machine to be idle (< 0.3 cores busy over 1 s)
# before a measured run: another build or test on the 2 cores moves every figure.
wait_quiet() {
  local m0 m1 t0=$SECONDS busy
  while (( SECONDS - t0 < ${QUIET_WAIT:-30} )); do
    read -r m0 _ < <(machine_ticks); sleep 1; read -r m1 _ < <(machine_ticks)
    busy=$(( (m1 - m0) * 100 / $(getconf CLK_TCK) ))
    (( busy < 30 )) && return 0
  done
  log "machine still busy (${busy}% of a core) after ${QUIET_WAIT:-30}s; measuring anyway"
}

# --- wrk ------------------------------------------------------------------------------

declare -A path=([analytics]=log_raw_analytics [metric]=log_raw_metric)
declare -A table=([analytics]=AnalyticsDetails [metric]=AnalyticsMetrics)
declare -A stream=([analytics]=ANALYTICS_DETAILS [metric]=ANALYTICS_METRICS)

# run_wrk ENDPOINT SECONDS CONNS [LUA]: wrk against the capture process; the RESULT line
# of bench/wrk.lua (rps p50 p99 ok requests socket_errors) lands in $wrk_*.
run_wrk() {
  local ep=$1 secs=$2 c=$3 lua=${4:-bench/wrk.lua} out line
  out="$(BENCH_SCENARIO=$ep timeout $((secs + 30)) wrk -t 2 -c "$c" -d "${secs}s" --timeout 5s \
         -s "$lua" -H "Authorization: Bearer $token" \
         "http://127.0.0.1:$svc_port/api/analytics/${path[$ep]}" 2>&1)" || true
  line="$(grep '^RESULT,' <<<"$out" || true)"
  [[ -n $line ]] || { echo "wrk failed ($ep): $out" >&2; return 1; }
  IFS=, read -r _ wrk_rps wrk_p50 wrk_p99 wrk_ok wrk_requests wrk_sock_errors <<<"$line"
}

# stored_rows MODE ENDPOINT: rows stored so far: the table (direct) or the stream.
stored_rows() {
  if [[ $1 == direct ]]; then sql "$capture_url" "select count(*) from \"${table[$2]}\""
  else js messages "${stream[$2]}"; fi
}

# ======================================================================================
# 1. Capture
# ======================================================================================
declare -A capture_rps=()
step_capture() {
  echo
  echo "### Capture ($conns connections, ${duration} s after a ${warmup} s warm-up; stream modes without a loader)"
  echo
  echo "| mode | endpoint | req/s | p50 ms | p99 ms | non-200 | rows stored in run | check | CPU cores: service / NATS / PostgreSQL / wrk / other |"
  echo "|---|---|---|---|---|---|---|---|---|"
  local mode ep before after rows check
  for mode in $modes; do
    case $mode in direct) ;; r1) nats_single ;; r3) nats_cluster ;; *) echo "unknown mode $mode" >&2; exit 2 ;; esac
    sql "$capture_url" 'truncate "AnalyticsMetrics", "AnalyticsDetails"' 2>/dev/null || true
    start_capture "$mode" "$capture_url"
    for ep in $endpoints; do
      log "capture $mode $ep: warm-up ${warmup}s, run ${duration}s"
      wait_quiet
      run_wrk "$ep" "$warmup" "$conns" || continue
      before=$(stored_rows "$mode" "$ep")
      cpu_begin $capture_pid
      run_wrk "$ep" "$duration" "$conns" || continue
      cpu_end
      sleep 0.5   # a stream's count can trail its last acks by a moment
      after=$(stored_rows "$mode" "$ep"); rows=$((after - before))
      # Every 200 must be stored; requests wrk abandoned at the deadline (at most one per
      # connection) may be stored too.
      check=ok; (( rows >= wrk_ok && rows <= wrk_ok + conns )) || check=BAD
      capture_rps[$mode.$ep]=$wrk_rps
      printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$mode" "$ep" "$wrk_rps" "$wrk_p50" \
        "$wrk_p99" "$((wrk_requests - wrk_ok))" "$rows" "$check" "$cpu_cols"
    done
    stop $capture_pid
    nats_stop
  done
}

# ======================================================================================
# 2. Loader throughput vs the 100-row INSERT ceiling
# ======================================================================================

# pgbench_ceiling: one 100-row INSERT of the analytics event per transaction into
# "AnalyticsDetails" (bench/pgbench.sh's method: -M prepared, -j 2, truncate + checkpoint
# first; `step` varies so every row's jsonb is parsed). Prints "clients rows_per_s" lines.
pgbench_ceiling() {
  local url=$1 c out tps i sep
  { echo '\set v random(0, 999)'
    echo 'insert into "AnalyticsDetails" ("id", "createdAt", "updatedAt", "userId", "type", "data", "dataIndex") values'
    for i in $(seq 1 100); do
      sep=','; [[ $i == 100 ]] && sep=';'
      echo "(gen_random_uuid()::text, now(), now(), 'bench-user', 'tutorial_step', ('{\"page\":\"/build\",\"referrer\":\"/marketplace/agent/42\",\"session\":{\"id\":\"b7e2c9d4-5a61-4f3e-9c8b-1d2e3f4a5b6c\",\"step\":' || :v + $i || ',\"started_at\":\"2026-11-22T10:15:30Z\"},\"viewport\":{\"w\":1920,\"h\":1080,\"dpr\":2},\"tags\":[\"onboarding\",\"tutorial\",\"builder\"],\"flags\":{\"beta\": true,\"dark_mode\": false},\"durations_ms\":[120,87,342,15]}')::jsonb, '3')$sep"
    done; } > "$work/analytics_batch100.sql"
  for c in $pg_clients; do
    psql "$url" -qX -c 'truncate "AnalyticsMetrics", "AnalyticsDetails"' -c 'checkpoint'
    wait_quiet
    if ! out="$(timeout $((pg_duration + 60)) pgbench -n -M prepared -c "$c" -j 2 -T "$pg_duration" \
                -f "$work/analytics_batch100.sql" "$url" 2>&1)"; then
      echo "pgbench -c $c failed: $(tail -n 1 <<<"$out")" >&2; continue
    fi
    tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")"
    awk -v c="$c" -v t="$tps" 'BEGIN { printf "%s %.0f\n", c, t * 100 }'
  done
}

step_loader() {
  local load_url filled t_fill n batch t0 t1 loaded count pending rows_per_s ceiling_best=0 c r
  local -a results=()
  load_url="$(fresh_database $load_db)"
  nats_single

  local run url
  for run in $loader_runs; do
    # The tables' streams are work queues (a loaded row leaves the stream): fill the
    # analytics stream again before each run, by capture alone, in 10 s runs, until it
    # holds LOAD_ROWS.
    start_capture r1 "$capture_url"
    sql "$capture_url" 'truncate "AnalyticsMetrics", "AnalyticsDetails"'
    t_fill=$SECONDS; filled=$(js messages ANALYTICS_DETAILS)
    while (( filled < load_rows && SECONDS - t_fill < fill_max )); do
      run_wrk analytics 10 "$conns" || break
      filled=$(js messages ANALYTICS_DETAILS)
      log "fill: $filled rows in the stream"
    done
    stop $capture_pid
    n=$(js messages ANALYTICS_DETAILS)
    (( n > 0 )) || { echo "the stream is empty" >&2; return 1; }
    (( $(js messages ANALYTICS_METRICS) == 0 )) || log "warning: the metrics stream is not empty"
    batch=${run%%:*}; url=$load_url; [[ $run == *:nossl ]] && url="$load_url?sslmode=disable"
    psql "$load_url" -qX -c 'truncate "AnalyticsMetrics", "AnalyticsDetails"' -c checkpoint 2>/dev/null || true
    js delete-consumer ANALYTICS_DETAILS loader
    js delete-consumer ANALYTICS_METRICS loader
    wait_quiet
    log "loader $run: $n rows"
    t0=$(date +%s.%N)
    start_loader "$batch" "$url"
    t0r=$(date +%s.%N)
    cpu_begin $loader_pid
    loaded=0; polls=0
    # rows_loaded_total moves right after each insert commits: poll it every 0.1 s; the
    # table's count every 2 s too, in case the counter trails.
    while (( loaded < n )); do
      loaded=$(prom "http://127.0.0.1:$loader_port/metrics" analytics_loader_rows_loaded_total AnalyticsDetails)
      loaded=${loaded%.*}
      (( ++polls % 20 == 0 )) && loaded=$(sql "$load_url" 'select count(*) from "AnalyticsDetails"')
      (( loaded < n )) || break
      awk -v a="$t0r" -v b="$(date +%s.%N)" -v m="$load_max" 'BEGIN { exit !(b - a > m) }' \
        && { log "loader $run: only $loaded of $n rows after ${load_max}s"; break; }
      sleep 0.1
    done
    t1=$(date +%s.%N)
    cpu_end
    sleep 1.5   # the pending gauge is read every second
    pending=$(prom "http://127.0.0.1:$loader_port/metrics" analytics_loader_pending_messages AnalyticsDetails)
    stop $loader_pid
    count=$(sql "$load_url" 'select count(*) from "AnalyticsDetails"')
    rows_per_s=$(awk -v n="$count" -v a="$t0r" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
    results+=("$run|$count|$(awk -v a="$t0" -v b="$t0r" 'BEGIN{printf "%.2f", b-a}')|$(awk -v a="$t0r" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')|$rows_per_s|${pending%.*}|$cpu_cols")
  done
  nats_stop

  log "pgbench ceiling (100-row INSERT into \"AnalyticsDetails\"), clients: $pg_clients"
  local -a ceiling=()
  while read -r c r; do
    ceiling+=("$c clients: $r rows/s"); (( r > ceiling_best )) && ceiling_best=$r
  done < <(pgbench_ceiling "$load_url")
  psql "$admin_url" -qX -c "drop database if exists $load_db with (force)"

  echo
  echo "### Loader (≥ $load_rows analytics rows in the stream before each run, one node; fresh database)"
  echo
  echo "pgbench 100-row INSERT ceiling (\"AnalyticsDetails\", ~300-byte jsonb \`data\`, ${pg_duration} s): ${ceiling[*]}"
  echo
  echo "| loader run (batch, :nossl = no TLS to PostgreSQL) | rows loaded | start-up s | load s | rows/s | % of ceiling ($ceiling_best) | pending after | CPU cores: loader / NATS / PostgreSQL / the bench's polls / other |"
  echo "|---|---|---|---|---|---|---|---|"
  local line b cnt su ls rps pend cpu
  for line in "${results[@]}"; do
    IFS='|' read -r b cnt su ls rps pend cpu <<<"$line"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$b" "$cnt" "$su" "$ls" "$rps" \
      "$(awk -v a="$rps" -v b="$ceiling_best" 'BEGIN { if (b > 0) printf "%.0f %%", 100 * a / b; else printf "NA" }')" "$pend" "$cpu"
  done
}

# ======================================================================================
# 3. End-to-end lag under a constant rate
# ======================================================================================
step_lag() {
  local rate="${LAG_RATE:-}" period t_start t_end published loaded lag target_rate
  if [[ -z $rate ]]; then
    [[ -n ${capture_rps[r1.analytics]:-} ]] || { echo "lag: no r1 analytics figure from step 1; set LAG_RATE" >&2; return 1; }
    rate=$(awk -v r="${capture_rps[r1.analytics]}" -v p="$lag_rate_pct" 'BEGIN { printf "%.0f", r * p / 100 }')
  fi
  nats_single
  start_capture r1 "$capture_url"   # its migrations make the tables if step 1 did not run
  sql "$capture_url" 'truncate "AnalyticsMetrics", "AnalyticsDetails"'
  # When the loader's insert wrote the row: clock_timestamp() (now() is the transaction's
  # start). UTC and ms like "createdAt". Only in this bench's own database.
  sql "$capture_url" "alter table \"AnalyticsDetails\" add column if not exists loaded_at timestamp(3) default (clock_timestamp() at time zone 'utc')"
  start_loader 500 "$capture_url${LAG_LOADER_PARAMS:-}"

  # A constant rate with plain wrk: each connection waits delay() ms before its next
  # request. The per-connection period is conns/rate; what a request itself takes is
  # measured in the warm-up and taken off the delay. Fractions of a ms by dithering.
  cat > "$work/rate.lua" <<'LUA'
dofile("bench/wrk.lua")
local period_ms = tonumber(os.getenv("BENCH_DELAY_MS"))
function delay()
  local whole = math.floor(period_ms)
  if math.random() < period_ms - whole then whole = whole + 1 end
  return whole
end
LUA
  period=$(awk -v c="$conns" -v r="$rate" 'BEGIN { printf "%.3f", c * 1000 / r }')
  wait_quiet
  log "lag: warm-up at $rate req/s target (delay ${period} ms per connection)"
  BENCH_DELAY_MS=$period run_wrk analytics "$warmup" "$conns" "$work/rate.lua"
  # (at most halved: a warm-up slowed by something else must not make the run overshoot)
  period=$(awk -v c="$conns" -v r="$rate" -v got="$wrk_rps" -v p="$period" \
    'BEGIN { d = c * 1000 / r - (c * 1000 / got - p); if (d < p / 2) d = p / 2; printf "%.3f", d }')
  log "lag: warm-up gave $wrk_rps req/s; delay now ${period} ms; run ${lag_duration}s"
  # Only rows captured after the warm-up count.
  t_start=$(date -u '+%Y-%m-%d %H:%M:%S.%3N')
  cpu_begin $capture_pid
  BENCH_DELAY_MS=$period run_wrk analytics "$lag_duration" "$conns" "$work/rate.lua"
  cpu_end
  t_end=$(date -u '+%Y-%m-%d %H:%M:%S.%3N')
  # Let the loader finish what is in flight (bounded): a row's lag is known once it is in.
  published=$(js messages ANALYTICS_DETAILS)
  local t_drain=$SECONDS
  while (( SECONDS - t_drain < ${LAG_DRAIN_MAX:-180} )); do
    loaded=$(sql "$capture_url" 'select count(*) from "AnalyticsDetails"')
    (( loaded >= published )) && break
    sleep 0.5
  done
  log "lag: $loaded of $published rows loaded $((SECONDS - t_drain)) s after the run"
  lag=$(sql "$capture_url" "
    select count(*),
           round(percentile_cont(0.5) within group (order by ms)::numeric, 1),
           round(percentile_cont(0.99) within group (order by ms)::numeric, 1),
           round(max(ms)::numeric, 1)
    from (select extract(epoch from loaded_at - \"createdAt\") * 1000 as ms
          from \"AnalyticsDetails\" where \"createdAt\" >= '$t_start' and \"createdAt\" < '$t_end') t")
  stop $loader_pid
  stop $capture_pid
  nats_stop
  echo
  echo "### End-to-end lag (stream mode, one node, capture + a separate loader with batch 500${LAG_LOADER_PARAMS:+ and DATABASE_URL…$LAG_LOADER_PARAMS}; ${lag_duration} s at a constant rate, $conns connections)"
  echo
  echo "| target req/s | achieved req/s | capture p50 / p99 ms | non-200 | rows measured | lag p50 ms | lag p99 ms | lag max ms | rows loaded / in stream | CPU cores: capture / NATS / PostgreSQL / wrk / other |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  IFS='|' read -r n p50 p99 max <<<"$lag"
  local target="$rate (LAG_RATE)"
  [[ -n ${LAG_RATE:-} ]] || target=$(printf '%s (%s %% of %.0f)' "$rate" "$lag_rate_pct" "${capture_rps[r1.analytics]}")
  printf '| %s | %.0f | %s / %s | %s | %s | %s | %s | %s | %s / %s | %s |\n' "$target" "$wrk_rps" "$wrk_p50" "$wrk_p99" "$((wrk_requests - wrk_ok))" \
    "$n" "$p50" "$p99" "$max" "$loaded" "$published" "$cpu_cols"
}

# ======================================================================================
capture_url="$(fresh_database $capture_db)"
token="$(env APP_ENV=prod JWT_VERIFY_KEY="$bench_key" "$bin" token --user-id bench-user --ttl 2h)"
echo "## bench/stream.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $("$nats_bin" --version)"
for step in $steps; do
  case $step in
    capture) step_capture ;;
    loader) step_loader ;;
    lag) step_lag ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
echo
log "done"
