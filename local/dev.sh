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

log() { printf '[dev] %s\n' "$*" >&2; }
reachable() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Leave running what was running before us (a test session, `make up`).
db_was_up=0; reachable "${DB_PORT:-54322}" && db_was_up=1
gw_was_up=0; reachable "${GATEWAY_PORT:-54321}" && gw_was_up=1

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
