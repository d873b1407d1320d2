"""int8 networks on this CPU: ONNX Runtime's static quantisation (QDQ, per-channel int8 weights,
activations calibrated on training CTs) against the fp32 export, speed and masks (not a test; prints
Markdown). A measurement for deciding, nothing ships through it.

1. The default model's ONNX export (the user cache; made first if missing) is run on
   ``--calibration`` OpenKBP training CTs; every input its networks get is recorded.
2. Each network is quantised with those inputs (MinMax calibration; weights int8 per channel,
   activations uint8).
3. On the OpenKBP validation CTs both variants segment every CT in turn: Dice vs PTV70, voxels that
   differ from fp32, and the networks' seconds (sum of session calls), other processes' CPU logged.

    .venv/bin/python benchmarks/bench_int8.py --calibration 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_floor import CpuWatch  # noqa: E402

from GTVAutoSegLib.bundle import resolve_model  # noqa: E402
from GTVAutoSegLib.metrics import dice  # noqa: E402
from GTVAutoSegLib.onnxnets import OrtNet, make_session, open_onnx  # noqa: E402
from GTVAutoSegLib.pipeline import Segmenter  # noqa: E402
from training.data import load_case, openkbp_cases  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "openkbp"


class Timed:
    """An OrtNet that adds its session seconds to a counter (and can record its inputs)."""

    def __init__(self, net: OrtNet, record: list | None = None):
        self.net, self.record, self.seconds = net, record, 0.0

    def probabilities(self, x):
        if self.record is not None:
            self.record.append(np.array(x, dtype=np.float32))
        t = time.perf_counter()
        p = self.net.probabilities(x)
        self.seconds += time.perf_counter() - t
        return p


def quantise(src: Path, dst: Path, inputs: list[np.ndarray]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter({"x": x} for x in inputs)

        def get_next(self):
            return next(self.items, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calibration", type=int, default=8, help="training CTs whose network inputs calibrate")
    p.add_argument("--max-patients", type=int, default=None, help="validation CTs (default: all)")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"bench_int8: {DATA} not found (the shared OpenKBP data)")
    model = open_onnx(*resolve_model(None)[:2], note=lambda m: print(m, file=sys.stderr))
    roles = [r for r in ("locator", "segmenter") if getattr(model, r) is not None]
    recorded = {r: [] for r in roles}
    for r in roles:
        setattr(model, r, Timed(getattr(model, r), recorded[r]))
    fp32 = Segmenter(model.bundle, "cpu", nets=model)
    for case in openkbp_cases(DATA, "train", "PTV70")[: args.calibration]:
        fp32(load_case(case)[0])
    for r in roles:  # recording done; timing only from here
        getattr(model, r).record, getattr(model, r).seconds = None, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        int8 = open_onnx(*resolve_model(None)[:2])
        for r in roles:
            dst = Path(tmp) / f"{r}.int8.onnx"
            quantise(model.folder / f"{r}.onnx", dst, recorded[r])
            setattr(int8, r, Timed(OrtNet(make_session(dst))))
        q = Segmenter(int8.bundle, "cpu", nets=int8)
        cases = openkbp_cases(DATA, "validation", "PTV70")
        cases = cases[: args.max_patients] if args.max_patients else cases
        d32, d8, differ, total, others = [], [], 0, 0, []
        for case in cases:
            ct, ref = load_case(case)
            ref = (ref.array == 1).astype(np.uint8)
            with CpuWatch() as w:
                a = fp32(ct).mask.array
                b = q(ct).mask.array
            others.append(w.others)
            d32.append(dice(a, ref)), d8.append(dice(b, ref))
            differ += int(np.count_nonzero(a != b))
            total += int(a.sum())
            print(f"{case.patient}: Dice fp32 {d32[-1]:.4f} int8 {d8[-1]:.4f}", file=sys.stderr, flush=True)
    print(f"{len(cases)} OpenKBP validation CTs; calibration: the networks' inputs on {args.calibration} training CTs; "
          f"{os.cpu_count()} cores; others' CPU max {max(others):.0%}\n")
    print("| networks | mean Dice vs PTV70 | median | locator s (all CTs) | segmenter s (all CTs) |")
    print("|---|---:|---:|---:|---:|")
    for name, d, nets in (("fp32 (the export)", d32, model), ("int8 static QDQ", d8, int8)):
        secs = " | ".join(f"{getattr(nets, r).seconds:.2f}" for r in roles)
        print(f"| {name} | {np.mean(d):.4f} | {np.median(d):.4f} | {secs} |")
    print(f"\nmask voxels that differ from fp32: {differ} of {total}")


if __name__ == "__main__":
    main()
