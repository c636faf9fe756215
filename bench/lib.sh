# Shared by the bench scripts (sourced from the project's root): loopback-only guards, the
# service started on a fresh database, its bench token, CPU ticks of processes.

bench_key="bench-secret-0123456789abcdef0123456789abcdef"
admin_url="${ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

# Refuses a database that is not on this machine; makes sure it answers.
require_local_database() {
  case "$admin_url" in *@127.0.0.1[:/]*|*@localhost[:/]*) ;; *) echo "refusing a non-loopback database" >&2; exit 2 ;; esac
  scripts/ensure-postgres "$admin_url"
}

require_wrk() { command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 2; }; }

# fresh_database NAME: drops and creates it; prints its URL.
fresh_database() {
  psql "$admin_url" -qX -c "drop database if exists $1 with (force)" -c "create database $1" >&2
  echo "${admin_url%/*}/$1"
}

# start_service PORT DATABASE_URL LOG [BIN] [SETTINGS...]: starts the service in the
# background (per-user rate limit off: every request comes from one bench user), waits until
# it is ready; its pid is in $service_pid.
start_service() {
  local port=$1 db_url=$2 log=$3 bin=${4:-target/release/analytics-service}
  env APP_ENV=prod HOST=127.0.0.1 PORT="$port" JWT_VERIFY_KEY="$bench_key" DATABASE_URL="$db_url" \
    RUST_LOG=warn APP_RATE_LIMIT__USER_PER_SECOND=0 "${@:5}" "$bin" > "$log" 2>&1 &
  service_pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return
    sleep 0.1
  done
}

# A token of the bench user, valid for 2 h.
bench_token() {
  env APP_ENV=prod JWT_VERIFY_KEY="$bench_key" target/release/analytics-service token --user-id bench-user --ttl 2h
}

# CPU ticks (user + system) of the given processes; one that has gone counts 0.
cpu_ticks() {
  local total=0 pid stat
  for pid in "$@"; do
    stat=($(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null)) || continue
    total=$(( total + ${stat[11]:-0} + ${stat[12]:-0} ))   # utime, stime
  done
  echo "$total"
}
