#!/usr/bin/env bash
# Set up, then run the main job: the gateway serving the example workflows on ./smithers.db, with
# the built-in console at /console (SMITHERS_CONSOLE=0 leaves it off). It prints the console's
# address and the admin token to sign in with.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
console=(--console)
if [ "${SMITHERS_CONSOLE:-1}" = 0 ]; then
  console=()
fi
exec .venv/bin/smithers serve examples/gateway.py --host "${SMITHERS_HOST:-127.0.0.1}" --port "${SMITHERS_PORT:-7331}" "${console[@]}" "$@"
