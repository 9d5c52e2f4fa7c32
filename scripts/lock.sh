#!/usr/bin/env bash
# Refresh constraints.txt on purpose: resolve the newest versions pyproject.toml allows in a
# throw-away virtual environment and pin them. Run the test suite before committing the result.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip >&2
"$tmp/venv/bin/python" -m pip install -q -e '.[dev,agents]' >&2
{
  echo "# Exact versions the test suite last passed with; installed by scripts/setup.sh."
  echo "# Refresh on purpose with: bash scripts/lock.sh"
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable --all | grep -v -E '^(pip|setuptools|wheel)=='
} > constraints.txt
echo "wrote constraints.txt ($(grep -c '==' constraints.txt) pins)" >&2
