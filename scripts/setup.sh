#!/usr/bin/env bash
# Create .venv (if needed) and install the pinned stack plus GTVAutoSegLib in editable mode.
# Idempotent: a second run only checks that the pins are satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  # torch first and alone, pinned: anything that lets pip pick torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  echo "$want" > "$stamp"
fi
# gtvautoseg serve draws its views offscreen with OSMesa (a Debian package; a warning elsewhere).
bash scripts/setup_system.sh gl || echo "setup.sh: gtvautoseg serve needs OSMesa (Debian: libosmesa6); the rest works without it" >&2
