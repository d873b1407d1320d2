"""The two inference engines side by side on real CTs: torch against ONNX Runtime (``--engine``),
same model, same process, the CPU. Not a test; prints Markdown.

For every OpenKBP validation CT (or ``--max-patients`` of them): both engines segment it (model
loaded, in turn, each timed with the read excluded), and the masks are compared with each other
(voxels that differ) and with the reference PTV70 (Dice). The ONNX export comes from the user cache
(``--cache``; exported there first if missing). Other processes' CPU use is logged per engine.

    .venv/bin/python benchmarks/bench_engines.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_floor import CpuWatch  # noqa: E402

from GTVAutoSegLib.bundle import load_bundle, resolve_model  # noqa: E402
from GTVAutoSegLib.metrics import dice  # noqa: E402
from GTVAutoSegLib.onnxnets import open_onnx  # noqa: E402
from GTVAutoSegLib.pipeline import Segmenter  # noqa: E402
from training.data import load_case, openkbp_cases  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "openkbp"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--split", default="validation")
    p.add_argument("--max-patients", type=int, default=None)
    p.add_argument("--cache", default=None, help="ONNX cache folder (default: the user cache)")
    args = p.parse_args()
    if not DATA.is_dir():
        sys.exit(f"bench_engines: {DATA} not found (the shared OpenKBP data)")
    if args.cache:
        os.environ["GTVAUTOSEG_CACHE"] = args.cache
    path, sha, _ = resolve_model(args.model)
    onnx_model = open_onnx(path, sha, note=lambda m: print(m, file=sys.stderr))
    engines = {"torch": Segmenter(load_bundle(path, sha), "cpu"),
               "onnx": Segmenter(onnx_model.bundle, "cpu", nets=onnx_model)}
    cases = openkbp_cases(DATA, args.split, "PTV70")
    cases = cases[: args.max_patients] if args.max_patients else cases
    rows, seconds, others = [], {k: [] for k in engines}, {k: [] for k in engines}
    for case in cases:
        ct, ref = load_case(case)
        ref = (ref.array == 1).astype(np.uint8)
        masks = {}
        for name, seg in engines.items():
            with CpuWatch() as w:
                t = time.perf_counter()
                masks[name] = seg(ct).mask.array
                seconds[name].append(time.perf_counter() - t)
            others[name].append(w.others)
        differ = int(np.count_nonzero(masks["torch"] != masks["onnx"]))
        rows.append((case.patient, dice(masks["torch"], ref), dice(masks["onnx"], ref), differ,
                     int(masks["torch"].sum())))
        print(f"{case.patient}: Dice torch {rows[-1][1]:.4f} onnx {rows[-1][2]:.4f}, {differ} voxels differ",
              file=sys.stderr, flush=True)
    d_t = np.array([r[1] for r in rows])
    d_o = np.array([r[2] for r in rows])
    print(f"{len(rows)} OpenKBP {args.split} CTs, model {engines['torch'].bundle.name} {engines['torch'].bundle.version}, "
          f"CPU, {os.cpu_count()} cores\n")
    print("| engine | mean Dice vs PTV70 | median | s per CT (median) | others' CPU (max) |")
    print("|---|---|---|---|---|")
    for name, d in (("torch", d_t), ("onnx", d_o)):
        print(f"| {name} | {d.mean():.4f} | {np.median(d):.4f} | {np.median(seconds[name]):.3f} | "
              f"{max(others[name]):.0%} |")
    print(f"\nmask voxels that differ between the engines: {sum(r[3] for r in rows)} of "
          f"{sum(r[4] for r in rows)} torch foreground voxels; CTs with any difference: "
          f"{sum(1 for r in rows if r[3])} of {len(rows)}; largest per-CT |Dice difference| "
          f"{np.abs(d_t - d_o).max():.5f}")


if __name__ == "__main__":
    main()
