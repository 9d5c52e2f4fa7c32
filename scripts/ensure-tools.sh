#!/usr/bin/env bash
# Make sure the system tools the tests use are installed (as root, from Debian's packages):
# git (working-directory snapshots, node diffs and rewinds), esbuild (bundling UI entries written
# in TypeScript/JSX) and chromium (the browser tests drive it through Playwright; the browser
# Playwright would download is not needed). Idempotent; prints nothing on success.
set -euo pipefail
missing=()
command -v git >/dev/null || missing+=(git)
command -v esbuild >/dev/null || missing+=(esbuild)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ensure-tools: installing ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
  echo "ensure-tools: please install: ${missing[*]}" >&2
  exit 1
fi
