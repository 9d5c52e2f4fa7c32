#!/usr/bin/env bash
# Create .venv (if needed) and install smithers with its development tools and the optional
# agents extra (pydantic-ai) into it, at the exact versions of constraints.txt (the ones the tests
# last passed with). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing python3-venv" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
      "$PYTHON" -m venv .venv
    else
      echo "setup: '$PYTHON -m venv' failed; install your distribution's python3-venv package" >&2
      exit 1
    fi
  fi
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,agents]' >&2
  rm -f .venv/.installed-* && touch "$stamp"
fi
