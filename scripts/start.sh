#!/usr/bin/env bash
# Set up, then run the main job: the gateway serving the example workflows on ./smithers.db.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/smithers serve examples/gateway.py --host "${SMITHERS_HOST:-127.0.0.1}" --port "${SMITHERS_PORT:-7331}" "$@"
