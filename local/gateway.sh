#!/usr/bin/env bash
# The Docker-free local Supabase API gateway (local/gateway/main.ts) on
# 127.0.0.1:54321: PostgREST-style RPC, edge functions, JWKS. Runs detached;
# its pid file and logs live in the state dir of local/db.sh.
#
#   local/gateway.sh start    start, idempotent; writes .env.local
#   local/gateway.sh stop     stop it and every function process, idempotent
#   local/gateway.sh status   exit 0 when running and healthy
#   local/gateway.sh restart
#
# PROJECT_KEYS=signing (default), legacy or both: the kind of hosted project
# to imitate (API keys, token algorithms, the functions' env, .env.local).
#
# Logs: <state>/gateway/gateway.log (stdout/stderr), <state>/gateway/requests.log
# (one line per request), <state>/gateway/functions/<name>.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DENO="$ROOT/node_modules/.bin/deno"
PORT="${GATEWAY_PORT:-54321}"
STATE="$("$ROOT/local/db.sh" state-dir)"
DIR="$STATE/gateway"
PIDFILE="$DIR/gateway.pid"
OUTLOG="$DIR/gateway.log"
STAMP="$DIR/gateway.code"
URL="http://127.0.0.1:$PORT"

log() { printf '[gateway] %s\n' "$*" >&2; }

pid_alive() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

healthy() {
  curl -fsS -m 2 "$URL/_gateway/health" >/dev/null 2>&1
}

# The kind of project to imitate (local/gateway/keys.ts): signing, legacy or both.
PROJECT_KEYS="${PROJECT_KEYS:-signing}"
case "$PROJECT_KEYS" in
  signing | legacy | both) ;;
  *) log "PROJECT_KEYS=$PROJECT_KEYS is not one of signing, legacy, both"; exit 2 ;;
esac

# The gateway's own code and the kind of project; a running gateway whose code
# or kind changed is restarted by start.
code_stamp() {
  { cat "$ROOT"/local/gateway/*.ts; echo "PROJECT_KEYS=$PROJECT_KEYS"; } | sha1sum | cut -c1-40
}

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start() {
  mkdir -p "$DIR"
  # A gateway that died leaves its pid file; clear it (and anything left in its group).
  if [ -f "$PIDFILE" ] && ! pid_alive; then stop; fi
  if pid_alive; then
    if ! healthy; then
      log "pid $(cat "$PIDFILE") is alive but not healthy; restarting it"
    elif [ "$(cat "$STAMP" 2>/dev/null)" = "$(code_stamp)" ]; then
      log "already running on $URL (pid $(cat "$PIDFILE"))"
      return 0
    else
      log "local/gateway/ or PROJECT_KEYS changed since it started; restarting"
    fi
    stop
  fi
  if port_taken; then
    log "port $PORT is taken by another process; stop it (or set GATEWAY_PORT) and retry"
    exit 1
  fi
  # Its own session (process group), so stop can end it and its function processes together.
  (
    cd "$ROOT"
    GATEWAY_PORT="$PORT" GATEWAY_STATE_DIR="$STATE" PROJECT_KEYS="$PROJECT_KEYS" \
      SUPABASE_DB_URL="$("$ROOT/local/db.sh" url)" \
      setsid "$DENO" run --allow-all --quiet --unstable-no-legacy-abort "$ROOT/local/gateway/main.ts" \
      >>"$OUTLOG" 2>&1 </dev/null 9>&- &
    echo $! >"$PIDFILE"
  )
  code_stamp >"$STAMP"
  for _ in $(seq 1 150); do
    if healthy; then
      log "running on $URL (pid $(cat "$PIDFILE"), PROJECT_KEYS=$PROJECT_KEYS); logs in $DIR"
      return 0
    fi
    if ! pid_alive; then
      log "failed to start; last lines of $OUTLOG:"
      tail -n 20 "$OUTLOG" >&2
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.2
  done
  log "did not become healthy within 30 s; see $OUTLOG"
  stop
  exit 1
}

stop() {
  if ! [ -f "$PIDFILE" ]; then
    log "not running"
    return 0
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    # The gateway stops its function processes on SIGTERM; the group kill is the fallback.
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "stopped"
  else
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "not running (stale pid file removed)"
  fi
  rm -f "$PIDFILE"
}

status() {
  if pid_alive && healthy; then
    log "running on $URL (pid $(cat "$PIDFILE"))"
  else
    log "not running"
    return 1
  fi
}

# One start or stop at a time: concurrent callers (make up, test harnesses) queue here.
with_lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/gateway.lock"
  flock -w 60 9 || { log "another local/gateway.sh holds $DIR/gateway.lock"; exit 1; }
  "$@"
}

case "${1:-}" in
  start) with_lock start ;;
  stop) with_lock stop ;;
  restart) with_lock stop; with_lock start ;;
  status) status ;;
  url) echo "$URL" ;;
  *) echo "usage: local/gateway.sh start|stop|restart|status|url" >&2; exit 2 ;;
esac
