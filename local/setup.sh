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

if [ ! -x "$ROOT/node_modules/.bin/deno" ] || [ ! -x "$ROOT/node_modules/.bin/supabase" ] \
   || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
  log "installing the npm toolchain (npm ci)"
  (cd "$ROOT" && npm ci --no-audit --no-fund >/dev/null 2>&1) || (cd "$ROOT" && npm ci --no-audit --no-fund)
fi

# The local project's JWT signing key ([auth] signing_keys_path of supabase/config.toml):
# every Supabase CLI command refuses to load the config while the file is missing.
if [ ! -f "$ROOT/supabase/signing_keys.json" ]; then
  log "creating the local JWT signing key (supabase/signing_keys.json)"
  "$ROOT/node_modules/.bin/deno" run --quiet --allow-read --allow-write --allow-env "$ROOT/local/gateway/keys.ts"
fi
