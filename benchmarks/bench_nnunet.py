"""nnU-Net v2's own predictor beside GTVAutoSeg on the same CTs, on this machine, in one run.

    bash scripts/setup_nnunet.sh
    .venv/bin/python benchmarks/bench_nnunet.py [--train-patients 8] [--json out.json]

nnU-Net plans its 2d and 3d_fullres configurations for our OpenKBP PTV70 export (fingerprint and
experiment planning on ``--train-patients`` training patients; every OpenKBP CT is 128^3, so a few
give the plans all of them give), then files each with its own network and random weights
(``nnunet_runner.py init``): speed does not depend on the weights. Each CT (OpenKBP ``pt_201``,
128^3, and the lung2 clinical CT, 512 x 512 x 61) then goes through every arm as a user runs it,
one command each, timed by ``/usr/bin/time`` (wall seconds and peak resident memory of the whole
command): ``gtvautoseg segment`` with the default model, and nnU-Net's predictor (``nnunet_runner.py
predict``, which is nnUNetv2_predict's predictor plus one stubbed import) for each configuration
with its default mirroring test-time augmentation on and off. Other processes' share of the CPU
is logged for every command; a run is kept as "quiet" when it stays under ``--quiet-share``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import CpuWatch  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RUNNER = ROOT / "training" / "comparison" / "nnunet_runner.py"
NNUNET_PYTHON = ROOT / ".venv-nnunet" / "bin" / "python"
DATASET_ID, DATASET = 591, "Dataset591_GTVSpeed"
CONFIGURATIONS = ("2d", "3d_fullres")


def _timed(cmd: list[str], env: dict, log) -> dict:
    """One command under /usr/bin/time: wall seconds, peak RSS (MiB), other processes' CPU share."""
    report = Path(tempfile.mktemp(suffix=".time"))
    with CpuWatch() as watch:
        rc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(report), *cmd], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall, kib = report.read_text().split()[-2:]
    report.unlink()
    return {"rc": rc, "wall_s": float(wall), "peak_mib": round(int(kib) / 1024), "others_cpu": round(watch.others, 3)}


def _cts(work: Path) -> dict[str, Path]:
    """Each CT as nnU-Net reads it (a folder with ``<case>_0000.nii.gz``) and as our CLI reads it."""
    import SimpleITK as sitk

    sources = {"openkbp_pt_201 (128^3)": DATA / "openkbp" / "validation" / "pt_201" / "ct.nii.gz",
               "lung2 (512 x 512 x 61)": DATA / "lung_pyradiomics" / "lung2_image.nrrd"}
    cts = {}
    for label, src in sources.items():
        if not src.is_file():
            sys.exit(f"bench_nnunet: {src} not found (the real data lives in ../shared/data)")
        folder = work / "inputs" / label.split()[0]
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(str(src)), str(folder / f"{label.split()[0]}_0000.nii.gz"))
        cts[label] = src
    return cts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-patients", type=int, default=8, help="OpenKBP training patients nnU-Net plans on")
    p.add_argument("--threads", type=int, default=2, help="threads for both tools (the machine's cores)")
    p.add_argument("--quiet-share", type=float, default=0.1, help="other processes' CPU share above which a run is not quiet")
    p.add_argument("--work", default=None, help="folder for the export, plans and outputs (default: temporary)")
    p.add_argument("--json", default=None)
    p.add_argument("--cts", default="openkbp_pt_201,lung2", help="comma list of the CTs to time (default: both)")
    p.add_argument("--arms", default="2d,3d_fullres", help="nnU-Net configurations to time (default: both)")
    p.add_argument("--ours-again", type=int, default=1,
                   help="also time gtvautoseg this many more times, after nnU-Net, for its median (default 1)")
    args = p.parse_args(argv)
    if not NNUNET_PYTHON.is_file():
        sys.exit(f"bench_nnunet: no nnU-Net environment at {NNUNET_PYTHON}; run: bash scripts/setup_nnunet.sh")
    from training.comparison.nnunet import export_raw
    from training.config import load_config
    from training.data import split_cases

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-nnunet-")).resolve()
    raw, pre, results = work / "raw", work / "preprocessed", work / "results"
    threads = str(args.threads)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(results),
               nnUNet_compile="false", nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    train, val = split_cases(load_config(str(ROOT / "training" / "configs" / "unet25d.json")).data, ROOT)
    export_raw(train[: args.train_patients], val[:1], raw, DATASET_ID, "GTVSpeed")
    log = open(work / "bench.log", "a")
    plans = {}
    for cfg in CONFIGURATIONS:
        report = work / f"init_{cfg}.json"
        subprocess.run([str(NNUNET_PYTHON), str(RUNNER), "init", "--dataset", DATASET, "--configuration", cfg,
                        "--threads", threads, "--report", str(report)], env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True, cwd=ROOT)
        plans[cfg] = json.loads(report.read_text())
    wanted = {c.strip() for c in args.cts.split(",") if c.strip()}
    configurations = [c.strip() for c in args.arms.split(",") if c.strip() in CONFIGURATIONS]
    cts = {label: src for label, src in _cts(work).items() if label.split()[0] in wanted}
    if not cts or not configurations:
        sys.exit("bench_nnunet: --cts takes openkbp_pt_201 and/or lung2, --arms 2d and/or 3d_fullres")
    rows = []
    for label, src in cts.items():
        case = label.split()[0]
        arms = [("GTVAutoSeg segment (default model)",
                 [str(ROOT / ".venv" / "bin" / "python"), "-m", "GTVAutoSegLib.cli", "segment", str(src), "-o",
                  str(work / "out" / "ours" / case), "--device", "cpu", "--progress", "none"])]
        for cfg in configurations:
            for tta in (True, False):
                arms.append((f"nnU-Net {cfg}, mirroring {'on (default)' if tta else 'off'}",
                             [str(NNUNET_PYTHON), str(RUNNER), "predict", "--dataset", DATASET, "--configuration", cfg,
                              "--threads", threads, "--input", str(work / "inputs" / case), "--output",
                              str(work / "out" / f"{cfg}_{tta}" / case), "--report", str(work / "predict.json"),
                              *(["--tta"] if tta else [])]))
        arms += [(f"{arms[0][0]}, again", arms[0][1])] * args.ours_again
        for name, cmd in arms:
            row = {"ct": label, "arm": name, **_timed(cmd, env, log)}
            row["quiet"] = row["others_cpu"] <= args.quiet_share
            rows.append(row)
            print(json.dumps(row), flush=True)
    log.close()
    lines = [f"Machine: {platform.machine()} CPU ({os.cpu_count()} cores), {args.threads} threads for each tool; "
             f"nnU-Net plans: " + "; ".join(f"{c} patch {plans[c]['patch_size']}, {plans[c]['parameters'] / 1e6:.1f} M "
                                           f"parameters" for c in CONFIGURATIONS), "",
             "| CT | command | wall s | peak memory MiB | other processes' CPU | x GTVAutoSeg's wall (median of its runs) |",
             "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        mine = sorted((r for r in rows if r["ct"] == row["ct"] and r["arm"].startswith("GTVAutoSeg")),
                      key=lambda r: r["wall_s"])
        ours = mine[(len(mine) - 1) // 2]  # the median (lower) of GTVAutoSeg's runs on this CT
        flag = "" if row["rc"] == 0 else f" (exit {row['rc']})"
        lines.append(f"| {row['ct']} | {row['arm']}{flag} | {row['wall_s']:.1f} | {row['peak_mib']} | "
                     f"{row['others_cpu']:.0%}{'' if row['quiet'] else ' (not quiet)'} | "
                     f"{row['wall_s'] / ours['wall_s']:.1f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"plans": plans, "rows": rows}, indent=1))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
