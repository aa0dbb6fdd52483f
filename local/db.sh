#!/usr/bin/env bash
# The Docker-free local Supabase database: a private PostgreSQL 15 cluster on
# 127.0.0.1:54322 (the port `supabase start` uses) with pg_cron preloaded, the
# roles and `auth` schema of a hosted project, and our migrations applied with
# the real Supabase CLI.
#
#   local/db.sh start     start (create on first use), idempotent
#   local/db.sh stop      stop, leaves no process behind
#   local/db.sh reset     throw the cluster away, create it anew, push migrations
#   local/db.sh push      apply pending migrations with `supabase db push`
#   local/db.sh url [db]  print the connection URL (cli-url: as the Supabase CLI needs it)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_BIN="/usr/lib/postgresql/15/bin"
DB_PORT="${DB_PORT:-54322}"
DB_PASSWORD="postgres"
db_url() { echo "postgresql://postgres:${DB_PASSWORD}@127.0.0.1:${DB_PORT}/${1:-postgres}"; }
# The Supabase CLI treats any port but the config's 54322 as a remote database
# and then insists on TLS unless told otherwise.
cli_url() {
  if [ "$DB_PORT" = 54322 ]; then db_url "$@"; else echo "$(db_url "$@")?sslmode=disable"; fi
}
DB_URL="$(db_url)"

log() { printf '[db] %s\n' "$*" >&2; }

# initdb refuses root and the cluster must be owned by `postgres`, whose access
# to the checkout is not guaranteed (CI clones into folders it may not enter).
# Use .local/ in the checkout when postgres can reach it, else a folder keyed by
# the checkout's path under /var/tmp.
# LOCAL_STATE_DIR puts a second stack of this checkout beside the development one
# (make test runs its own there): its own cluster, gateway, logs.
state_dir() {
  if [ -n "${LOCAL_STATE_DIR:-}" ]; then
    mkdir -p "$LOCAL_STATE_DIR"
    echo "$LOCAL_STATE_DIR"
    return
  fi
  local local_dir="$ROOT/.local"
  mkdir -p "$local_dir"
  if runuser -u postgres -- test -x "$local_dir" 2>/dev/null; then
    echo "$local_dir"
  else
    local key
    key="$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)"
    mkdir -p "/var/tmp/device-qr-bundle-$key"
    echo "/var/tmp/device-qr-bundle-$key"
  fi
}

STATE="$(state_dir)"
PGDATA="$STATE/pgdata"
PGLOG="$STATE/postgres.log"

as_postgres() {
  if [ "$(id -un)" = postgres ]; then "$@"; else runuser -u postgres -- "$@"; fi
}

psql_admin() {
  PGPASSWORD="$DB_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$DB_PORT" -U postgres "$@"
}

is_running() {
  [ -f "$PGDATA/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$DB_PORT") 2>/dev/null
}

create_cluster() {
  log "creating cluster in $PGDATA"
  mkdir -p "$STATE"
  chown postgres:postgres "$STATE"
  local pwfile="$STATE/.pw"
  printf '%s\n' "$DB_PASSWORD" >"$pwfile"
  chown postgres:postgres "$pwfile"
  as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U postgres --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >>"$PGDATA/postgresql.conf" <<CONF
# --- device-qr-bundle local stack ---
listen_addresses = '127.0.0.1'
port = $DB_PORT
unix_socket_directories = '$STATE'
shared_preload_libraries = 'pg_cron,pg_stat_statements,plpgsql_check'
cron.database_name = 'postgres'
cron.use_background_workers = on
max_worker_processes = 32
max_connections = 200
timezone = 'UTC'
log_min_messages = warning
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
}

start() {
  if is_running; then
    log "already running on 127.0.0.1:$DB_PORT"
    return 0
  fi
  if port_taken; then
    log "port $DB_PORT is taken by another process; stop it (or set DB_PORT) and retry"
    exit 1
  fi
  local fresh=0
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    create_cluster
    fresh=1
  fi
  # The port is given at each start: a cluster created under another DB_PORT keeps that one in its conf.
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 -o "-p $DB_PORT" start >/dev/null
  if [ "$fresh" = 1 ]; then
    bootstrap
    push
  fi
  log "running on 127.0.0.1:$DB_PORT"
}

bootstrap() {
  log "bootstrapping Supabase roles and auth schema"
  psql_admin -d postgres -q -c "set client_min_messages = warning" -f "$ROOT/local/sql/supabase-bootstrap.sql" >/dev/null
}

push() {
  log "applying migrations with supabase db push"
  (cd "$ROOT" && "$ROOT/node_modules/.bin/supabase" db push --db-url "$(cli_url)" --yes) >"$STATE/push.log" 2>&1 || {
    cat "$STATE/push.log" >&2
    exit 1
  }
}

stop() {
  if is_running; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
    log "stopped"
  else
    log "not running"
  fi
}

reset() {
  stop
  rm -rf "$PGDATA"
  start
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  reset) reset ;;
  push) push ;;
  bootstrap) bootstrap ;;
  url) db_url "${2:-postgres}" ;;
  cli-url) cli_url "${2:-postgres}" ;;
  state-dir) echo "$STATE" ;;
  psql) shift; psql_admin -d postgres "$@" ;;
  port) echo "$DB_PORT" ;;
  *) echo "usage: local/db.sh start|stop|reset|push|url|psql" >&2; exit 2 ;;
esac
