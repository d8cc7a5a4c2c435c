#!/usr/bin/env bash
# Install Nightshift with its worker and test extras into .venv, then run the test-suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[worker,dev]'
# The dashboard's browser tests drive Debian's chromium (never a downloaded browser). CI installs it
# when missing; elsewhere those tests skip and say so, unless NIGHTSHIFT_INSTALL_BROWSER=1.
if ! command -v chromium >/dev/null && [ "${CI:-}${NIGHTSHIFT_INSTALL_BROWSER:-}" != "" ] \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
exec .venv/bin/python -m pytest "$@"
