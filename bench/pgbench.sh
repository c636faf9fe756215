#!/usr/bin/env bash
# The database's own ceiling for our INSERTs, with pgbench (no HTTP in the way), on a fresh
# database with the service's migrations applied:
#   single    one-row INSERT, one commit per row (what a non-batching service can reach)
#   batch100  one 100-row INSERT per commit
#   analytics_single  one-row INSERT of the `analytics` scenario's event (the same ~300-byte
#             `data`, parsed into jsonb on every row), one commit per row
# Prints CSV: variant,clients,tps,rows_per_s,lat_avg_ms
# Env: DURATION=6 CLIENTS="16 64" ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${DURATION:-6}"
clients="${CLIENTS:-16 64}"
source bench/lib.sh
db=analytics_pgbench
require_local_database
db_url="$(fresh_database $db)"
psql "$db_url" -qX -f migrations/postgres/0001_init.sql
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT

values() {  # $1 = number of rows
  for i in $(seq 1 "$1"); do
    sep=','; [[ $i == "$1" ]] && sep=';'
    echo "(gen_random_uuid()::text, now(), now(), 'bench_metric_' || :v, :v + $i, '/build/$i', 'bench-user')$sep"
  done
}
for variant in single:1 batch100:100; do
  { echo '\set v random(0, 999)'
    echo 'insert into "AnalyticsMetrics" ("id", "createdAt", "updatedAt", "analyticMetric", "value", "dataString", "userId") values'
    values "${variant#*:}"; } > "$work/${variant%:*}.sql"
done
# bench/wrk.lua's analytics event; `step` varies so that every row's jsonb is parsed at
# execution. A space follows `:` before true/false, else pgbench reads `:true` as a variable.
cat > "$work/analytics_single.sql" <<'SQL'
\set v random(0, 999)
insert into "AnalyticsDetails" ("id", "createdAt", "updatedAt", "userId", "type", "data", "dataIndex")
values (gen_random_uuid()::text, now(), now(), 'bench-user', 'tutorial_step',
  ('{"page":"/build","referrer":"/marketplace/agent/42","session":{"id":"b7e2c9d4-5a61-4f3e-9c8b-1d2e3f4a5b6c","step":'
   || :v || ',"started_at":"2026-11-22T10:15:30Z"},"viewport":{"w":1920,"h":1080,"dpr":2},'
   || '"tags":["onboarding","tutorial","builder"],"flags":{"beta": true,"dark_mode": false},"durations_ms":[120,87,342,15]}')::jsonb,
  '3');
SQL

echo "variant,clients,tps,rows_per_s,lat_avg_ms"
for variant in single:1 batch100:100 analytics_single:1; do
  name="${variant%:*}"; rows="${variant#*:}"
  for c in $clients; do
    psql "$db_url" -qX -c 'truncate "AnalyticsMetrics", "AnalyticsDetails"' -c 'checkpoint'
    if ! out="$(timeout $(( duration + 60 )) pgbench -n -M prepared -c "$c" -j 2 -T "$duration" -f "$work/$name.sql" "$db_url" 2>&1)"; then
      echo "pgbench $name -c $c failed: $(tail -n 1 <<<"$out")" >&2; echo "$name,$c,NA,NA,NA"; continue
    fi
    tps="$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")"
    lat="$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")"
    awk -v v="$name" -v c="$c" -v t="$tps" -v r="$rows" -v l="$lat" \
      'BEGIN { printf "%s,%s,%.0f,%.0f,%s\n", v, c, t, t * r, l }'
  done
done
psql "$admin_url" -qX -c "drop database if exists $db with (force)"
