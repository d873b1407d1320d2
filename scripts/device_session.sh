#!/usr/bin/env bash
# The commands of a GPU session's calls (DEVELOPERS.md, "A GPU session"), run on the borrowed
# machine from the repository root, so that each device call is one short line:
#
#   bash scripts/device_session.sh bench        # call 1: install the carried MONAI wheel, bench_device.py
#   bash scripts/device_session.sh train [MIN]  # call 3: both networks from the pack side by side for MIN
#                                               #   minutes (default 8), bundle, split into $OUT
#
# Outputs go to $OUT (the device tool's folder; /tmp/device_out elsewhere), at most 8 files of at
# most 16 MiB as the tool returns them: the bundle in 3 equal parts (`cat hcf.pt.part-* > hcf.pt`
# here, then compare its SHA-256 with the one in build_bundle.log) and logs.tgz. The runs stay in
# carry/gpu_runs (ignored, so kept while the machine is warm: a next call can --resume from
# last.pt). Runs on the CPU too (DEVICE=cpu).
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
    "$PY" -m training.train --config training/configs/classifier.json --out "$run/classifier" "${common[@]}" \
        >"$OUT/classifier.log" 2>&1 &
    cls=$!
    "$PY" -m training.train --config training/configs/sanet_cr.json --out "$run/sanet" "${common[@]}" \
        >"$OUT/sanet.log" 2>&1 &
    seg=$!
    status=0
    wait $cls || status=$?
    wait $seg || status=$?
    tail -n 2 "$OUT/classifier.log" "$OUT/sanet.log"
    [ "$status" -eq 0 ] || { echo "a training run failed (exit $status); see its log in \$OUT" >&2; exit "$status"; }
    "$PY" -m training.build_bundle --classifier "$run/classifier/best.pt" --segmenter "$run/sanet/best.pt" \
        --out "$run/hcf.pt" --half --name hcf-openkbp-ptv70 --version gpu-candidate 2>&1 | tee "$OUT/build_bundle.log"
    split -n 3 "$run/hcf.pt" "$OUT/hcf.pt.part-"
    mkdir -p "$run/logs"
    for net in classifier sanet; do
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
