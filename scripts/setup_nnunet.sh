#!/usr/bin/env bash
# Create .venv-nnunet with nnU-Net v2 for the comparison rows (training/comparison/nnunet.py). Idempotent.
# Not needed for the tests or the main command. About 1 GB on disk, a minute or two to install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-nnunet/bin/python ]; then
  "$PY" -m venv .venv-nnunet
fi
stamp=.venv-nnunet/.constraints.sha256
want=$(sha256sum training/comparison/nnunet-constraints.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv-nnunet/bin/python -m pip install -q --disable-pip-version-check "$(grep -E '^torch==' training/comparison/nnunet-constraints.txt)"
  .venv-nnunet/bin/python -m pip install -q --disable-pip-version-check -c training/comparison/nnunet-constraints.txt \
    "$(grep -E '^nnunetv2==' training/comparison/nnunet-constraints.txt)"
  echo "$want" > "$stamp"
fi
