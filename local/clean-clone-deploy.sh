#!/usr/bin/env bash
# What a user's own CI does with this project: take a clean clone (no make, no
# set-up, no generated or git-ignored file), and push every migration with the
# stock Supabase CLI to an empty Supabase-shaped database. Fails on any error,
# on any warning the CLI prints (a deprecated config key or flag), and unless
# every migration is recorded (local/db.sh migrated).
#
#   local/clean-clone-deploy.sh <supabase binary> [database name]
#
# The clone is the files git would commit from this tree (tracked and
# untracked-but-not-ignored), so it checks the work in progress as a clone of
# it would be. The database is created anew on the local stack (local/db.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLI="$(realpath "${1:?usage: local/clean-clone-deploy.sh <supabase binary> [database name]}")"
DB="${2:-clean_clone}"
cd "$ROOT"

version="$("$CLI" --version)"
clone="$(mktemp -d "${TMPDIR:-/tmp}/clean-clone.XXXXXX")"
trap 'rm -rf "$clone"' EXIT
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' path; do
  if [ -e "$path" ]; then printf '%s\0' "$path"; fi
done | xargs -0 cp --parents -t "$clone"

local/db.sh create-db "$DB" >/dev/null
url="$(local/db.sh cli-url "$DB")"
# The CLI 3 way to name a database is --remote=<url>; --db-url before it.
case "$version" in
  2.*) target=(--db-url "$url") ;;
  *) target=(--remote="$url") ;;
esac

echo "supabase $version: db push from a clean clone ($(find "$clone" -type f | wc -l) files)"
status=0
(cd "$clone" && "$CLI" db push "${target[@]}" --yes) >"$clone.log" 2>&1 || status=$?
cat "$clone.log"
warnings="$(grep -iE 'warn|deprecat' "$clone.log" || true)"
rm -f "$clone.log"
if [ "$status" -ne 0 ]; then
  echo "FAIL: supabase $version db push exited with $status"
  exit 1
fi
if [ -n "$warnings" ]; then
  echo "FAIL: supabase $version warned:"
  echo "$warnings"
  exit 1
fi

if ! local/db.sh migrated "$DB"; then
  echo "FAIL: supabase $version did not record every migration"
  exit 1
fi
echo "supabase $version: every migration recorded, no warning"
