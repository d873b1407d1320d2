#!/usr/bin/env bash
# The commands of a GPU session's calls (DEVELOPERS.md, "A GPU session"), run on the borrowed
# machine from the repository root, so that each device call is one short line:
#
#   bash scripts/device_session.sh bench        # call 1: install the carried MONAI wheel, bench_device.py
#   bash scripts/device_session.sh train [MIN]  # last call: the default model's two networks (3D locator,
#                                               #   2.5D U-Net) from the pack side by side for MIN minutes
#                                               #   (default 8), bundled as the shipped 0.2.0 is, into $OUT
#
# Outputs go to $OUT (the device tool's folder; /tmp/device_out elsewhere), at most 8 files of at
# most 16 MiB as the tool returns them: the bundle (10 MB fp16; compare its SHA-256 with the one in
# build_bundle.log) and logs.tgz. The runs stay in carry/gpu_runs (ignored, so kept while the machine
# is warm: a next call can --resume from last.pt). Runs on the CPU too (DEVICE=cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_out}
PY=${PYTHON:-python3}
PACK=${PACK:-carry/openkbp96}
DEVICE=${DEVICE:-auto}
mkdir -p "$OUT"
export PYTHONPATH="carry/site:.${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

case "${1:-}" in
bench)
    if ls carry/whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target carry/site carry/whl/*.whl
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1 || true
    "$PY" benchmarks/bench_device.py --device "$DEVICE" --model hcf-openkbp-ptv70 --json "$OUT/device.json" \
        "${@:2}" 2>&1 | tee "$OUT/bench_device.log"
    ;;
train)
    minutes=${2:-8}
    "$PY" -m training.tablepack check "$PACK"
    run=carry/gpu_runs
    common=(--set "data.pack=\"$PACK\"" --device "$DEVICE" --time-budget-min "$minutes" "${@:3}")
    "$PY" -m training.train --config training/configs/locator_ptv_classes.json --out "$run/locator" "${common[@]}" \
        >"$OUT/locator.log" 2>&1 &
    loc=$!
    "$PY" -m training.train --config training/configs/unet25d_long.json --out "$run/unet25d" "${common[@]}" \
        >"$OUT/unet25d.log" 2>&1 &
    seg=$!
    status=0
    wait $loc || status=$?
    wait $seg || status=$?
    tail -n 2 "$OUT/locator.log" "$OUT/unet25d.log"
    [ "$status" -eq 0 ] || { echo "a training run failed (exit $status); see its log in \$OUT" >&2; exit "$status"; }
    "$PY" -m training.build_bundle --locator "$run/locator/best.pt" --segmenter "$run/unet25d/best.pt" \
        --out "$OUT/hcf.pt" --half --name hcf-openkbp-ptv70 --version gpu-candidate --threshold 0.9 \
        --combine gate=locator --combine locator_weight=0.5 --target PTV70 2>&1 | tee "$OUT/build_bundle.log"
    mkdir -p "$run/logs"
    for net in locator unet25d; do
        cp "$run/$net/log.csv" "$run/logs/${net}_log.csv"
        cp "$run/$net/summary.json" "$run/logs/${net}_summary.json"
        mv "$OUT/$net.log" "$run/logs/"
    done
    cp "$OUT/build_bundle.log" "$run/logs/"
    tar -czf "$OUT/logs.tgz" -C "$run" logs
    ls -l "$OUT"
    ;;
*)
    echo "usage: bash scripts/device_session.sh bench [bench_device args] | train [MINUTES [train args]]" >&2
    exit 2
    ;;
esac
