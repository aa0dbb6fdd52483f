#!/usr/bin/env bash
# `make dev`: the whole system on this machine, watchable in a browser.
#   database + gateway (local/db.sh, local/gateway.sh), a seeded demo user with
#   four devices, three simulated backend servers, and the demo page.
# Prints the URL; Ctrl-C (or SIGTERM) stops everything it started.
#
#   DEMO_PORT=54330 DEMO_WORKERS=3 DEMO_HEARTBEAT_TIMEOUT_S=10 local/dev.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DENO="$ROOT/node_modules/.bin/deno"
export DEMO_PORT="${DEMO_PORT:-54330}"
STATE="$(local/db.sh state-dir)"
export DEMO_LOG_DIR="${DEMO_LOG_DIR:-$STATE/demo}"
mkdir -p "$DEMO_LOG_DIR"

export DB_PORT="${DB_PORT:-54322}"
export GATEWAY_PORT="${GATEWAY_PORT:-54321}"

log() { printf '[dev] %s\n' "$*" >&2; }
reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid listening on a port, when the system tells (ss needs to see the process).
port_holder() {
  ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

# This checkout's database: its postmaster.pid names a live process on DB_PORT.
our_db_is_up() {
  local pidfile="$STATE/pgdata/postmaster.pid"
  [ -f "$pidfile" ] && kill -0 "$(head -1 "$pidfile")" 2>/dev/null \
    && [ "$(sed -n 4p "$pidfile")" = "$DB_PORT" ]
}

# This checkout's gateway: its pid file names a live session that holds GATEWAY_PORT.
our_gateway_is_up() {
  local pidfile="$STATE/gateway/gateway.pid" holder
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || return 1
  holder="$(port_holder "$GATEWAY_PORT")"
  [ -n "$holder" ] && [ "$(ps -o sid= -p "$holder" | tr -d ' ')" = "$(cat "$pidfile")" ]
}

# Refuses a port held by anything but this checkout's own stack, naming the holder.
refuse_foreign() { # refuse_foreign <port> <what>
  local holder who=""
  holder="$(port_holder "$1")"
  if [ -n "$holder" ]; then
    who=" by pid $holder ($(tr '\0' ' ' <"/proc/$holder/cmdline" 2>/dev/null | cut -c1-160)"
    who+="; working directory $(readlink "/proc/$holder/cwd" 2>/dev/null || echo unknown))"
  fi
  log "port $1 ($2) is held$who, which is not this checkout's stack ($ROOT)."
  log "Stop that stack (\`make down\` in its checkout), or pick free ports:" \
    "DB_PORT=… GATEWAY_PORT=… DEMO_PORT=… make dev"
  exit 1
}

# Leave running what this checkout ran before us (a test session, `make up`);
# never borrow another checkout's stack, whose database has other data and code.
db_was_up=0
if reachable "$DB_PORT"; then
  our_db_is_up || refuse_foreign "$DB_PORT" "database"
  db_was_up=1
fi
gw_was_up=0
if reachable "$GATEWAY_PORT"; then
  our_gateway_is_up || refuse_foreign "$GATEWAY_PORT" "API gateway"
  gw_was_up=1
fi
if reachable "$DEMO_PORT"; then refuse_foreign "$DEMO_PORT" "demo page"; fi

demo_pid=""
cleanup() {
  trap - INT TERM EXIT
  log "stopping"
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$demo_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$demo_pid" 2>/dev/null || true
  fi
  [ "$gw_was_up" = 1 ] || local/gateway.sh stop >/dev/null 2>&1 || true
  [ "$db_was_up" = 1 ] || local/db.sh stop >/dev/null 2>&1 || true
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

local/db.sh start
local/gateway.sh start

log "starting the demo (workers log to $DEMO_LOG_DIR/workers.log)"
"$DENO" run -A --quiet local/demo/server.ts >"$DEMO_LOG_DIR/server.out" 2>"$DEMO_LOG_DIR/server.log" &
demo_pid=$!
for _ in $(seq 1 600); do
  if grep -q '^DEMO_URL=' "$DEMO_LOG_DIR/server.out" 2>/dev/null; then break; fi
  if ! kill -0 "$demo_pid" 2>/dev/null; then
    cat "$DEMO_LOG_DIR/server.log" >&2
    log "the demo server exited"
    exit 1
  fi
  sleep 0.1
done
url="$(sed -n 's/^DEMO_URL=//p' "$DEMO_LOG_DIR/server.out" | head -1)"
[ -n "$url" ] || { log "the demo server did not start in time"; exit 1; }

cat <<MSG

  Device QR demo: $url

  Three simulated servers pair four devices of demo@device-qr.local.
  Kill the server a QR comes from and watch the QR come back from another one.
  Heartbeat timeout lowered to ${DEMO_HEARTBEAT_TIMEOUT_S:-10} s for the demo (restored on exit).
  Press Ctrl-C to stop everything.

MSG
echo "DEMO_URL=$url"
wait "$demo_pid" || true
