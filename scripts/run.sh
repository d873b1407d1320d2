#!/usr/bin/env bash
# The README's main command: set up from nothing, then segment a real patient CT with the
# default model (an OpenKBP validation case from ../shared/data unless --input is given).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
