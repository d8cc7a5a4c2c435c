#!/usr/bin/env bash
# Install Nightshift with its worker and test extras into .venv, then run the test-suite.
# Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[worker,dev]'
exec .venv/bin/python -m pytest "$@"
