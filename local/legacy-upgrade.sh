#!/usr/bin/env bash
# Builds the old system's database (local/fixtures/legacy_schema.sql) in its
# own database, then upgrades it with `supabase db push` exactly as an existing
# project would be. local/fixtures/legacy_upgrade.test.sql then checks it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LEGACY_URL="$(local/db.sh cli-url legacy_upgrade)"

local/db.sh psql -c "drop database if exists legacy_upgrade with (force)" >/dev/null
local/db.sh psql -c "create database legacy_upgrade" >/dev/null
local/db.sh psql -d legacy_upgrade -f local/sql/supabase-bootstrap.sql >/dev/null
local/db.sh psql -d legacy_upgrade -f local/fixtures/legacy_schema.sql >/dev/null
node_modules/.bin/supabase db push --db-url "$LEGACY_URL" --yes
