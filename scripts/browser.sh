#!/usr/bin/env bash
# Make Debian's chromium available for the browser test (cryptovault/tests/test_browser.py),
# the way scripts/services.sh makes PostgreSQL and Redis available: use it when present,
# else install it with apt-get. Where it cannot be installed this only warns, and the
# browser test is skipped with that reason; the rest of `make test` runs.
set -uo pipefail

say() { printf '[browser] %s\n' "$*" >&2; }

[ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ] && exit 0
command -v chromium >/dev/null && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v apt-get >/dev/null; then
  say "no chromium and no apt-get: the browser test will be skipped (set CHROMIUM to a Chromium binary)"
  exit 0
fi
say "installing chromium (apt-get)"
if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; then
  exit 0
fi
say "could not install chromium: the browser test will be skipped"
exit 0
