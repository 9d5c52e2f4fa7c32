#!/usr/bin/env bash
# The whole test suite: set up, start PostgreSQL, lint, type-check, check import layers, run every test (in parallel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/ensure-tools.sh
SMITHERS_TEST_PG_URL="$(bash scripts/ensure-postgres.sh)"
export SMITHERS_TEST_PG_URL
echo "== ruff" && .venv/bin/ruff check smithers tests bench examples
echo "== mypy" && .venv/bin/mypy
echo "== import layers" && .venv/bin/lint-imports --no-cache
echo "== pytest"
exec .venv/bin/pytest -n "${SMITHERS_TEST_WORKERS:-auto}" -p no:cacheprovider -q "$@"
