#!/usr/bin/env bash
# Set up, then run the main job. Until the gateway is wired, this runs an example workflow end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if .venv/bin/smithers --help 2>/dev/null | grep -q " serve "; then
  exec .venv/bin/smithers serve examples/gateway.py --host "${SMITHERS_HOST:-127.0.0.1}" --port "${SMITHERS_PORT:-7331}" "$@"
fi
exec .venv/bin/smithers run examples/pipeline.py --input '{"topic": "durable workflows"}' "$@"
