"""Seconds per CT of a whole ``gtvautoseg batch`` command on 512 x 512 CTs, this tree against
another (not a test; prints Markdown).

The CTs are real anatomy at a clinical grid: OpenKBP CTs from ../shared/data resampled to
``--slices`` x 512 x 512 (linear, int16, gzip NIfTI), so the model's slice picker finds its target
as on a clinical CT and the segmenter runs on as many slices as it would. Each arm is one whole
command in a fresh interpreter (imports and model load included: they are reported apart, from a
command that only loads the model); arms are interleaved round by round so they see the same
machine load, and other processes' CPU use is logged per command. The outputs of the two trees are
compared voxel for voxel.

    python benchmarks/bench_batch.py --cases 6 --slices 150 --baseline /tmp/oldtree
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import CpuWatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "openkbp" / "validation"


def make_cases(folder: Path, count: int, slices: int) -> list[Path]:
    import SimpleITK as sitk

    found = sorted(DATA.glob("*/ct.nii.gz"))[:count]
    if len(found) < count:
        sys.exit(f"bench_batch: needs {count} OpenKBP CTs under {DATA}, found {len(found)}")
    out = []
    for f in found:
        im = sitk.ReadImage(str(f))
        size, spacing = im.GetSize(), im.GetSpacing()
        new_size = (512, 512, slices)
        new_spacing = tuple(spacing[i] * size[i] / new_size[i] for i in range(3))
        r = sitk.Resample(im, new_size, sitk.Transform(), sitk.sitkLinear, im.GetOrigin(), new_spacing,
                          im.GetDirection(), -1000, sitk.sitkInt16)
        path = folder / f"{f.parent.name}.nii.gz"
        sitk.WriteImage(r, str(path), useCompression=True)
        target = f.parent / "rois" / "PTV70.nii.gz"
        if target.exists():  # the physician's target on the same grid, for Dice
            ref = sitk.Resample(sitk.ReadImage(str(target)), r, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            sitk.WriteImage(ref, str(folder.parent / "ref" / f"{f.parent.name}.nii.gz"), useCompression=True)
        out.append(path)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def run_arm(tree: Path, cases: Path, out: Path, model: str | None) -> tuple[float, float, float, list[float]]:
    """(whole command s, model-load command s, others' CPU, per-case seconds from summary.csv)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    extra = ["--model", model] if model else []
    cmd = [sys.executable, "-m", "GTVAutoSegLib.cli", "batch", str(cases), "-o", str(out), "--device", "cpu",
           "--progress", "none", *extra]
    load = [sys.executable, "-c", "from GTVAutoSegLib.cli import build_parser, open_segmenter; "
            f"open_segmenter(build_parser().parse_args(['segment', '-', '-o', '.', '--device', 'cpu', *{extra!r}]))"]
    with CpuWatch() as w:
        t = time.perf_counter()
        subprocess.run(cmd, cwd=str(tree), env=env, check=True, capture_output=True)
        whole = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run(load, cwd=str(tree), env=env, check=True, capture_output=True)
    loading = time.perf_counter() - t
    with open(out / "summary.csv", newline="") as f:
        per_case = [float(r["seconds"]) for r in csv.DictReader(f)]
    return whole, loading, w.others, per_case


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--slices", type=int, default=150)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", default=None)
    p.add_argument("--baseline", type=Path, default=None, help="another source tree (e.g. `git worktree add`)")
    args = p.parse_args()
    trees = [("this tree", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        cases = Path(tmp) / "cts"
        cases.mkdir()
        (Path(tmp) / "ref").mkdir()
        make_cases(cases, args.cases, args.slices)
        found = {name: [] for name, _ in trees}
        for r in range(args.rounds):
            for name, tree in trees if r % 2 == 0 else trees[::-1]:
                found[name].append(run_arm(tree, cases, Path(tmp) / f"out-{name}-{r}", args.model))
        import SimpleITK as sitk

        dices = {name: [] for name, _ in trees}
        for c in sorted(cases.iterdir()):
            stem = c.name[: -len(".nii.gz")]
            masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / f"out-{n}-0" / f"{stem}_label.nii.gz")))
                     for n, _ in trees]
            ref_path = Path(tmp) / "ref" / f"{stem}.nii.gz"
            ref = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path))) if ref_path.exists() else None
            for (name, _), m in zip(trees, masks):
                if ref is not None:
                    dices[name].append(dice(m, ref))
            line = f"{stem}: " + ", ".join(f"{name} {int((m != 0).sum())} voxels" + (f" Dice {dice(m, ref):.4f}" if ref is not None else "")
                                          for (name, _), m in zip(trees, masks))
            if len(masks) == 2:
                line += "; outputs " + ("equal" if np.array_equal(masks[0], masks[1]) else "DIFFER")
            print(line)
        print()
        for name, _ in trees:
            if dices[name]:
                print(f"{name}: Dice vs PTV70 on the resampled grid, mean {np.mean(dices[name]):.4f}, "
                      f"median {np.median(dices[name]):.4f} over {len(dices[name])} CTs")
        print()
    n = args.cases
    print(f"`gtvautoseg batch` of {n} OpenKBP CTs resampled to {args.slices} x 512 x 512, {os.cpu_count()} cores; "
          f"best of {args.rounds} interleaved rounds")
    print()
    print("| tree | whole command | imports + model load | cases only | per CT (cases only) | per case (summary.csv, median) | other processes' CPU (max) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in trees:
        whole, loading, others, per_case = min(found[name], key=lambda x: x[0])
        print(f"| {name} | {whole:.2f} s | {loading:.2f} s | {whole - loading:.2f} s | {(whole - loading) / n:.2f} s | "
              f"{float(np.median(per_case)):.2f} s | {max(x[2] for x in found[name]):.0%} |")


if __name__ == "__main__":
    main()
