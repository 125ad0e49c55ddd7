#!/usr/bin/env bash
# The test suite as CI runs it: set up .venv, bring up what the tests need
# (chromium for the dashboard test, a throw-away PostgreSQL server for the
# many-workers test), run pytest, and tear the server down again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup.sh

if [ "$(id -u)" = 0 ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver postgresql >/dev/null
fi

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -n "$pg_bin" ]; then
  pg_dir=$(mktemp -d /tmp/ggt-pg.XXXX)
  run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres "$pg_dir"
  run_pg "$pg_bin/initdb" -D "$pg_dir/data" -U ggt --auth=trust >/dev/null
  run_pg "$pg_bin/pg_ctl" -s -D "$pg_dir/data" -o "-p 54329 -k $pg_dir -c listen_addresses=127.0.0.1" -l "$pg_dir/log" -w start
  trap 'run_pg "$pg_bin/pg_ctl" -s -D "$pg_dir/data" -m fast stop; rm -rf "$pg_dir"' EXIT
  run_pg "$pg_bin/createdb" -h 127.0.0.1 -p 54329 -U ggt ggt_test
  export GGT_TEST_POSTGRES_URL="postgresql+psycopg2://ggt@127.0.0.1:54329/ggt_test"
fi

# Lint and format first: a style slip fails in seconds, before the long suite.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
