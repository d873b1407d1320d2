#!/usr/bin/env bash
# The README's test command: set up from nothing, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (tests/test_web_app.py) drive Debian's chromium. Without it they fail and say
# so; the rest of the suite still runs.
bash scripts/setup_system.sh browser \
  || echo "scripts/test.sh: chromium could not be installed; the browser tests will fail" >&2
# dicom3tools' dciodvfy checks the DICOM SEG/RTSTRUCT we write (tests/test_dicom_export.py); it is a
# Debian package, not a Python one. Without root or apt the tests that need it skip and say why.
if ! command -v dciodvfy >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q dicom3tools >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dicom3tools >/dev/null 2>&1; } \
    || echo "scripts/test.sh: could not install dicom3tools; the dciodvfy checks will skip" >&2
fi
exec .venv/bin/python -m pytest "$@"
