# The front door. Every target does its own set-up (local/setup.sh) on a fresh
# Debian machine with Node only.
.PHONY: dev test up down db-reset setup lock migration status reset-device reset-inactive reset-all server-add server-disable server-enable bench chaos

dev: setup          ## the main job: local stack + fleet + live demo (Ctrl-C stops all)
	@local/dev.sh

test:               ## every test; ends with "N passed, M failed"
	@local/test.sh

setup:
	@local/setup.sh

lock:               ## re-resolve the Deno graphs: deno.lock and each function's deno.lock (README: Dependencies)
	@LOCK_UPDATE=1 local/setup.sh

migration: up       ## write the next migration from supabase/schemas/: make migration NAME=<name> (docs/schema.md)
	@test -n "$(NAME)" || { echo "usage: make migration NAME=<name>"; exit 2; }
	@node_modules/.bin/deno run -A local/schema.ts migration "$(NAME)"

up: setup           ## start database and API gateway, detached
	@local/db.sh start
	@if [ -x local/gateway.sh ]; then local/gateway.sh start; fi

down:               ## stop everything make up started
	@if [ -x local/gateway.sh ]; then local/gateway.sh stop; fi
	@local/db.sh stop

db-reset: setup     ## throw the local database away and rebuild it from the migrations
	@if [ -x local/gateway.sh ]; then local/gateway.sh stop; fi
	@local/db.sh reset

status: up          ## operator view of assignment_health()
	@node_modules/.bin/deno run -A cli/operator.ts status

# Operator verbs of the old fix script, over the reassign-device API:
#   make reset-device ID=<uuid> [DRY_RUN=1]   make reset-inactive [DRY_RUN=1]   make reset-all [DRY_RUN=1]
OPERATOR = node_modules/.bin/deno run -A cli/operator.ts
reset-device: up
	@$(OPERATOR) reset-device $(ID) $(if $(DRY_RUN),--dry-run)
reset-inactive: up
	@$(OPERATOR) reset-inactive $(if $(DRY_RUN),--dry-run)
reset-all: up
	@$(OPERATOR) reset-all $(if $(DRY_RUN),--dry-run)

# Backend server accounts:  make server-add NAME=<name>   make server-disable NAME=<name>   make server-enable NAME=<name>
server-add: up
	@$(OPERATOR) server add "$(NAME)"
server-disable: up
	@$(OPERATOR) server disable "$(NAME)"
server-enable: up
	@$(OPERATOR) server enable "$(NAME)"

chaos: setup        ## faults with invariants on a private stack (PostgreSQL restart included); report in test-results/chaos-report.md
	@node_modules/.bin/deno run -A tests/chaos/chaos.ts --seconds $${CHAOS_SECONDS:-180} --db-restart

bench: up           ## benchmarks (duration: bench/README.md): bench/results/REPORT.md and SVG charts
	@node_modules/.bin/deno run -A bench/run.ts
