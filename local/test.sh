#!/usr/bin/env bash
# Every test of the project, on a freshly built local stack:
#   migrations (empty database, legacy upgrade, equal to supabase/schemas/, a
#   clean clone with the stock CLI), lint and advisor gates, pgTAP (supabase/tests/database), and
#   the Deno suites in tests/ (gateway fidelity, functions in-process and end
#   to end, worker, demo). The database suites and one end-to-end run go again
#   on PostgreSQL 17 (what runs where: README, "The local stack").
#   Migrations are always applied by a `postgres` that is not a superuser.
# Ends with one line: "N passed, M failed".
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/node_modules/.bin:$PATH"
export NO_COLOR=1
RESULTS="$ROOT/test-results"
mkdir -p "$RESULTS"

# The tests run on a throwaway stack of their own, beside the development one
# (`make dev` / `make up`, which they never touch): its own cluster and gateway
# under <state>/test-stack, its own ports, its own .env.local; removed at exit.
DEV_STATE="$(local/db.sh state-dir)"
export LOCAL_STATE_DIR="$DEV_STATE/test-stack"
export DB_PORT="${TEST_DB_PORT:-27322}" GATEWAY_PORT="${TEST_GATEWAY_PORT:-27321}"
export DEMO_TEST_PORT="${TEST_DEMO_PORT:-27330}"
export GATEWAY_ENV_FILE="$LOCAL_STATE_DIR/.env.local"
# The PostgreSQL 17 stack: its own cluster and gateway beside the first.
PG17_STATE_DIR="$LOCAL_STATE_DIR/pg17"
PG17_DB_PORT="${TEST_PG17_DB_PORT:-27323}" PG17_GATEWAY_PORT="${TEST_PG17_GATEWAY_PORT:-27324}"
pg17() { # pg17 <command...>: runs it against the PostgreSQL 17 stack
  PG_MAJOR=17 LOCAL_STATE_DIR="$PG17_STATE_DIR" DB_PORT="$PG17_DB_PORT" \
    GATEWAY_PORT="$PG17_GATEWAY_PORT" GATEWAY_ENV_FILE="$PG17_STATE_DIR/.env.local" "$@"
}
printf '%s\n' "$DB_PORT" "$GATEWAY_PORT" "$DEMO_TEST_PORT" "$PG17_DB_PORT" "$PG17_GATEWAY_PORT" \
  >"$RESULTS/ports"

# What the development database holds, to prove afterwards that the run left it alone.
dev_fingerprint() {
  local pgdata="$DEV_STATE/pgdata"
  if [ ! -f "$pgdata/PG_VERSION" ]; then echo "no development cluster"; return; fi
  echo "cluster $(stat -c '%i %Y' "$pgdata/PG_VERSION")"
  if [ -f "$pgdata/postmaster.pid" ]; then
    local port
    port="$(sed -n 4p "$pgdata/postmaster.pid")"
    PGPASSWORD=postgres psql -X -At -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "
      select 'servers ' || count(*) || ' ' || coalesce(md5(string_agg(id::text || server_name, ',' order by id)), '')
        from public.backend_servers;
      select 'devices ' || count(*) || ' ' || coalesce(md5(string_agg(id::text || coalesce(user_id::text, ''), ',' order by id)), '')
        from public.devices" 2>&1
  fi
}
DEV_BEFORE="$(dev_fingerprint)"

passed=0
failed=0
failures=()

record() { # record <name> <passed> <failed>
  passed=$((passed + $2))
  failed=$((failed + $3))
  if [ "$3" -gt 0 ]; then failures+=("$1 ($3)"); fi
  printf '== %-48s %d passed, %d failed\n' "$1" "$2" "$3"
}

gate() { # gate <name> <command...>: one test that passes when the command does
  local name="$1"; shift
  local logfile="$RESULTS/$(echo "$name" | tr ' /' '__').log"
  if "$@" >"$logfile" 2>&1; then record "$name" 1 0; else
    tail -40 "$logfile"; record "$name" 0 1; fi
}

tap() { # tap <name> <pg_prove args...>: counts TAP lines
  local name="$1"; shift
  local logfile="$RESULTS/$(echo "$name" | tr ' /' '__').log"
  pg_prove --verbose "$@" >"$logfile" 2>&1
  local rc=$?
  local ok notok
  ok=$(grep -cE '^ok [0-9]+' "$logfile")
  notok=$(grep -cE '^not ok [0-9]+' "$logfile")
  if [ "$rc" -ne 0 ] && [ "$notok" -eq 0 ]; then notok=1; fi # plan mismatch, crash
  if [ "$rc" -ne 0 ]; then grep -E '^not ok|^#|Failed|Dubious|ERROR' "$logfile" | head -60; fi
  record "$name" "$ok" "$notok"
}

deno_suite() { # deno_suite <name> <deno test args...>
  local name="$1"; shift
  local logfile="$RESULTS/$(echo "$name" | tr ' /' '__').log"
  deno test --quiet "$@" >"$logfile" 2>&1
  local rc=$?
  local line p f
  line=$(grep -E '^(ok|FAILED) \| [0-9]+ passed' "$logfile" | tail -1)
  p=$(sed -E 's/.*\| ([0-9]+) passed.*/\1/' <<<"$line")
  f=$(sed -E 's/.*\| ([0-9]+) failed.*/\1/' <<<"$line")
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$rc" -ne 0 ]; then sed -n '/ERRORS/,$p' "$logfile" | head -120; [ -n "$line" ] || tail -40 "$logfile"; fi
  record "$name" "$p" "$f"
}

node_suite() { # node_suite <name> <node --test args...>: counts the TAP summary
  local name="$1"; shift
  local logfile="$RESULTS/$(echo "$name" | tr ' /()' '____').log"
  node --test --test-reporter=tap "$@" >"$logfile" 2>&1
  local rc=$? p f
  p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$logfile" | tail -1)
  f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$logfile" | tail -1)
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  if [ "$rc" -ne 0 ]; then grep -E -A12 '^not ok' "$logfile" | head -80; tail -20 "$logfile"; fi
  record "$name" "$p" "$f"
}

# Every process this run starts carries the run's id in its environment, so the
# exit trap finds what a suite left behind (a demo, a worker, a function) and
# .ci/run can check that nothing survived. Function processes get a cleared
# environment; they belong to the gateway, which stops them.
export DEVICE_QR_TEST_RUN="$$-$RANDOM-$(date +%s)"
echo "$DEVICE_QR_TEST_RUN" >"$RESULTS/run-id"
stop_everything() {
  pg17 local/gateway.sh stop >/dev/null 2>&1 || true
  pg17 local/db.sh stop >/dev/null 2>&1 || true
  local/gateway.sh stop >/dev/null 2>&1 || true
  local/db.sh stop >/dev/null 2>&1 || true
  rm -rf "$LOCAL_STATE_DIR"
  local pid
  for pid in $(grep -lsz "^DEVICE_QR_TEST_RUN=$DEVICE_QR_TEST_RUN\$" /proc/[0-9]*/environ | cut -d/ -f3); do
    [ "$pid" = $$ ] || kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_everything EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

local/setup.sh || { echo "0 passed, 1 failed"; exit 1; }
local/gateway.sh stop >/dev/null 2>&1 || true
export PGPASSWORD=postgres

# database_suites <major> [pg17]: the migrations (fresh, legacy upgrade), the
# lint and advisor gates and pgTAP on one major. What needs pg_cron or
# plpgsql_check, which PostgreSQL 17 here lacks, runs on 15 only and says so.
database_suites() {
  local major="$1"
  shift
  local on=("$@") url
  gate "migrations apply to an empty database (PG $major)" "${on[@]}" local/db.sh reset
  # Applied by `postgres`, which is not a superuser, as on a hosted project.
  gate "migrations applied by a non-superuser postgres (PG $major)" "${on[@]}" local/db.sh migrated
  gate "legacy database upgrades in place (PG $major)" "${on[@]}" local/legacy-upgrade.sh
  # supabase/schemas/ (the database as it stands) and the migrations build the same database.
  gate "schemas/ equal migrations/, by pgdelta diff (PG $major)" "${on[@]}" deno run -A local/schema.ts check
  url="$("${on[@]}" local/db.sh cli-url)"
  if [ "$major" = 15 ]; then
    gate "supabase db lint (warning) (PG $major)" supabase db lint --remote="$url" --level warning \
      --schema public,device_assignment --fail-on warning
  else
    echo "-- skipped on PG $major: supabase db lint (it runs plpgsql_check, which has no build for $major here)"
  fi
  gate "supabase db advisors (warn) (PG $major)" supabase db advisors --remote="$url" --fail-on warn
  gate "splinter lints (no WARN/ERROR), fresh database (PG $major)" \
    deno run -A local/splinter/run.ts "$("${on[@]}" local/db.sh url)"
  gate "splinter lints (no WARN/ERROR), upgraded legacy database (PG $major)" \
    deno run -A local/splinter/run.ts "$("${on[@]}" local/db.sh url legacy_upgrade)"
  local port files=()
  port="$("${on[@]}" local/db.sh port)"
  for f in supabase/tests/database/*.test.sql; do
    if [ "$major" != 15 ] && grep -q 'cron\.' "$f"; then
      echo "-- skipped on PG $major: $f (pg_cron has no build for $major here)"
    else
      files+=("$f")
    fi
  done
  tap "pgTAP supabase/tests/database (PG $major)" -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    "${files[@]}"
  tap "pgTAP legacy upgrade (PG $major)" -h 127.0.0.1 -p "$port" -U postgres -d legacy_upgrade \
    local/fixtures/legacy_upgrade.test.sql
}

database_suites 15
# What a user's CI does: a clean clone, the stock CLI, no set-up, no warning.
gate "clean clone deploys with supabase 3.1.0, no warning" \
  local/clean-clone-deploy.sh node_modules/.bin/supabase clean_clone_cli3
gate "clean clone deploys with supabase 2.117.0, no warning" \
  local/clean-clone-deploy.sh local/cli-previous/node_modules/.bin/supabase clean_clone_cli2

# The Deno suites reach the stack through SUPABASE_URL and keys only.
if [ -x local/gateway.sh ]; then
  gate "local gateway starts" local/gateway.sh start
fi
# The suites find the local stack through tests/e2e/harness.ts (which honours
# GATEWAY_PORT); direct database suites read SUPABASE_DB_URL.
export SUPABASE_DB_URL="${SUPABASE_DB_URL:-$(local/db.sh url)}"
gate "deno fmt --check" deno fmt --check
gate "deno lint" deno lint
# What no test imports (the gateway, the benchmarks, the CLI, the worker, the
# functions) is type-checked here, so a change that breaks a caller fails now.
gate "deno check (functions, local stack, bench, cli, worker)" \
  deno check supabase/functions/ local/ bench/ cli/ worker/
# The benchmark's peer queues have a graph of their own (bench/peers/deno.json).
gate "deno fmt, lint and check (bench/peers)" bash -c '
  deno fmt --check --config bench/peers/deno.json bench/peers/ &&
  deno lint --config bench/peers/deno.json bench/peers/ &&
  deno check --config bench/peers/deno.json bench/peers/main.ts'
deno_suite "deno tests" -A --no-check=remote --ignore=tests/e2e tests/
# The backend package as a backend runs it, against this stack (GATEWAY_ENV_FILE): Deno imports
# its src/, Node the dist/ setup built (the tests import "@device-qr/backend"). Node 20 has no
# global WebSocket, which supabase-js 2.119 requires: --experimental-websocket gives it one.
deno_suite "backend package on Deno" -A --no-check=remote packages/backend/test/
if (cd packages/backend && rm -rf dist-test && node_modules/.bin/tsc -p tsconfig.test.json) \
     >"$RESULTS/backend_package_build.log" 2>&1; then
  node_suite "backend package on Node" --experimental-websocket packages/backend/dist-test/
else
  tail -40 "$RESULTS/backend_package_build.log"; record "backend package on Node" 0 1
fi
# The end-to-end suite against each kind of hosted project (local/gateway/keys.ts):
# the gateway restarts as that kind; the harness reads the keys its .env.local names.
for kind in signing legacy both; do
  if PROJECT_KEYS="$kind" local/gateway.sh start >"$RESULTS/gateway_$kind.log" 2>&1; then
    PROJECT_KEYS="$kind" deno_suite "e2e ($kind)" -A --no-check=remote tests/e2e/
  else
    tail -20 "$RESULTS/gateway_$kind.log"; record "e2e ($kind)" 0 1
  fi
done
local/gateway.sh start >/dev/null 2>&1 # back to the kind this run was asked for (PROJECT_KEYS)

# PostgreSQL 17, on a stack of its own: the database suites, then the end-to-end
# suite once (the project kinds differ only above the database).
database_suites 17 pg17
if pg17 local/gateway.sh start >"$RESULTS/gateway_pg17.log" 2>&1; then
  SUPABASE_DB_URL="$(pg17 local/db.sh url)" PROJECT_KEYS=signing \
    pg17 deno_suite "e2e (signing) (PG 17)" -A --no-check=remote tests/e2e/
else
  tail -20 "$RESULTS/gateway_pg17.log"; record "e2e (signing) (PG 17)" 0 1
fi
pg17 local/gateway.sh stop >/dev/null 2>&1
pg17 local/db.sh stop >/dev/null 2>&1

# A smoke run of the benchmarks: fails on wrong behaviour (an error, a double
# claim, more than one RPC per request, a device never recovered), never on a
# slow figure; figures go to test-results/bench/.
gate "bench smoke (bench/run.ts --quick)" deno run -A bench/run.ts --quick

dev_untouched() {
  local after
  after="$(dev_fingerprint)"
  [ "$DEV_BEFORE" = "$after" ] || { printf 'before: %s\nafter:  %s\n' "$DEV_BEFORE" "$after"; return 1; }
}
gate "the development database is as it was" dev_untouched

echo
if [ "${#failures[@]}" -gt 0 ]; then printf 'failed: %s\n' "${failures[@]}"; fi
echo "took ${SECONDS}s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
