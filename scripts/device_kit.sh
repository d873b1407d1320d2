#!/usr/bin/env bash
# Stage, under carry/ (git-ignored), what a GPU session carries to the borrowed machine: the MONAI
# wheel its image lacks (Python 3.12 there) and the OpenKBP PTV70 slice-table pack at the shipped
# model's 96 x 96 (PTV63/PTV56 as class 2, which the locator learns and the 2D network does not see),
# cut into 4 MiB parts: a call carries 64 MiB, the tracked tree (both shipped bundles) about 57 of them.
# See DEVELOPERS.md, "A GPU session". Needs ../shared/data and the environment of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p carry/whl
if ! ls carry/whl/monai-*.whl >/dev/null 2>&1; then
    monai=$(grep -i '^monai==' requirements.txt)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d carry/whl "$monai"
fi
if [ ! -d carry/openkbp96 ]; then
    "$PY" -m training.tablepack build --config training/configs/locator_ptv_classes.json --out carry/openkbp96 \
        --part-mib 4
fi
"$PY" -m training.tablepack check carry/openkbp96
tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "tracked tree $((tracked / 1048576)) MiB of the 64 MiB a call carries; staged:"
find carry -type f -name '*.whl' -o -type f -name 'part-*' | sort | xargs du -h
