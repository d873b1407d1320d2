#!/usr/bin/env bash
# The README's test command: set up from nothing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/test_web_*.py) drive Debian's chromium.
bash scripts/setup_system.sh browser
exec .venv/bin/python -m pytest "$@"
