#!/usr/bin/env bash
# Builds the old system's database (local/fixtures/legacy_schema.sql) in its
# own database, then upgrades it with `supabase db push` exactly as an existing
# project would be. local/fixtures/legacy_upgrade.test.sql then checks it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

local/db.sh create-db legacy_upgrade
local/db.sh psql -d legacy_upgrade -f local/fixtures/legacy_schema.sql >/dev/null
local/db.sh push legacy_upgrade
