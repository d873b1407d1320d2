"""nnU-Net v2 on the same patients as our networks: the dataset in its raw layout, its own planning,
preprocessing and training under a stated budget, and its predictions scored like ours.

    bash scripts/setup_nnunet.sh          # once: .venv-nnunet with nnunetv2 (about 1 GB)
    python -m training.comparison.nnunet run --configuration 2d --budget-min 10 --threads 1

``run`` does, each step skipped when its output is there:

1. ``export``: every train and validation patient to ``Dataset<ID>_<Name>`` (``imagesTr/<case>_0000.nii.gz``,
   ``labelsTr/<case>.nii.gz`` with the target as label 1, ``dataset.json``; the validation CTs again
   under ``imagesTs``), plus the split (train patients train, validation patients validate: the
   selection our own runs use).
2. ``plan``, ``train``, ``predict``: ``training/comparison/nnunet_runner.py`` in nnU-Net's environment (it never
   imports this project): ``nnUNetv2_plan_and_preprocess``, nnU-Net's trainer stopped by the wall-clock
   budget, prediction of the validation CTs.
3. ``evaluate``: each prediction read back onto its CT's grid by physical position and scored with
   the library's metrics into ``eval/per_patient.csv``, the file :mod:`training.comparison.experiments` tables.

This module needs only the main environment; the runner alone needs nnunetv2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from GTVAutoSegLib import io
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.outputs import atomic_output

from ..config import load_config
from ..data import CaseRef, load_case, split_cases
from ..evaluate import metric_row, summary_markdown, write_rows
from ..provenance import ROOT, git_commit

RUNNER = Path(__file__).resolve().parent / "nnunet_runner.py"
FILE_ENDING = ".nii.gz"
CONFIGURATIONS = ("2d", "3d_fullres")


def dataset_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name, ``Dataset<3-digit id>_<Name>``."""
    if not 1 <= dataset_id <= 999:
        raise GTVError(f"nnU-Net dataset ids run from 1 to 999, got {dataset_id}")
    if not name or any(c in name for c in "/_ "):
        raise GTVError(f"nnU-Net dataset name must be non-empty without '/', '_' or spaces, got {name!r}")
    return f"Dataset{dataset_id:03d}_{name}"


def _check_case_id(patient: str) -> None:
    # nnU-Net splits "<case>_0000.nii.gz" on the last "_": any case id is fine but a path separator
    if not patient or "/" in patient or os.sep in patient:
        raise GTVError(f"case id {patient!r} cannot be an nnU-Net file name")


def _write_ct(ct: Image, path: Path) -> None:
    # atomic: an interrupted export never leaves a file that nnU-Net would take for a case
    import SimpleITK as sitk

    array = ct.array.astype(np.int16) if _integral(ct.array) else ct.array.astype(np.float32)
    with atomic_output(path) as tmp:
        sitk.WriteImage(ct.with_array(array).to_sitk(), str(tmp), True)


def export_raw(train: list[CaseRef], validation: list[CaseRef], raw_root: str | Path, dataset_id: int,
               name: str, target: str = "target") -> Path:
    """Write the nnU-Net v2 raw dataset; returns its folder.

    Both splits go to ``imagesTr``/``labelsTr`` (nnU-Net preprocesses what it trains and validates
    on), the validation CTs also to ``imagesTs`` (what ``predict`` reads), and ``split.json`` names
    the two sides. CTs keep their own grid and values; labels are the binary target (uint8 0/1).
    """
    if not train or not validation:
        raise GTVError("nnU-Net export needs at least one training and one validation patient")
    ids = [c.patient for c in train + validation]
    if len(set(ids)) != len(ids):
        raise GTVError("a patient is on both sides of the split or listed twice")
    folder = Path(raw_root) / dataset_name(dataset_id, name)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in train + validation:
        _check_case_id(case.patient)
        image_path = folder / "imagesTr" / f"{case.patient}_0000{FILE_ENDING}"
        label_path = folder / "labelsTr" / f"{case.patient}{FILE_ENDING}"
        if not (image_path.is_file() and label_path.is_file()):
            ct, mask = load_case(case)
            _write_ct(ct, image_path)
            io.write_labelmap(mask, label_path)  # uint8, target = 1
    for case in validation:
        test_path = folder / "imagesTs" / f"{case.patient}_0000{FILE_ENDING}"
        if not test_path.is_file():
            shutil.copyfile(folder / "imagesTr" / f"{case.patient}_0000{FILE_ENDING}", test_path)
    meta = {
        "channel_names": {"0": "CT"},  # "CT" selects nnU-Net's CT intensity normalisation
        "labels": {"background": 0, target: 1},
        "numTraining": len(ids),
        "file_ending": FILE_ENDING,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    (folder / "split.json").write_text(json.dumps(
        {"train": [c.patient for c in train], "val": [c.patient for c in validation]}, indent=1))
    return folder


def _integral(a: np.ndarray) -> bool:
    return bool(np.issubdtype(a.dtype, np.integer) or (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))
                                                         and a.min() >= -32768 and a.max() <= 32767))


def read_prediction(path: str | Path, ct: Image) -> Image:
    """An nnU-Net prediction as a binary mask on ``ct``'s grid (resampled by physical position,
    nearest neighbour, when nnU-Net wrote it on another grid)."""
    path = Path(path)
    if not path.is_file():
        raise GTVError(f"nnU-Net wrote no prediction {path}")
    values = np.unique(io.read_image(path).array)
    if not set(values.tolist()) <= {0, 1}:
        raise GTVError(f"{path} holds labels {values.tolist()}, expected 0/1")
    pred = io.read_mask(path, like=ct)  # resampled by physical position when on another grid
    return pred.with_array((pred.array > 0).astype(np.uint8))


def evaluate_predictions(pred_dir: str | Path, cases: list[CaseRef], seconds_per_case: float = math.nan) -> list[dict]:
    """Rows in :mod:`training.evaluate`'s format (arm ``alone``) for the cases' predictions."""
    rows = []
    for case in cases:
        ct, ref = load_case(case)
        mask = read_prediction(Path(pred_dir) / f"{case.patient}{FILE_ENDING}", ct)
        row = metric_row(case.patient, "alone", mask, ref)
        row["seconds"] = seconds_per_case
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ run


def _runner(python: str, args: list[str], env: dict, log) -> dict:
    cmd = [python, str(RUNNER), *args]
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        raise GTVError(f"nnU-Net runner failed (exit {rc}): {' '.join(args[:1])}; see {log.name}")
    return {"command": " ".join(cmd)}


def run(args) -> int:
    python = Path(args.nnunet_python)
    if not python.is_file():
        raise GTVError(f"no nnU-Net environment at {python}; run: bash scripts/setup_nnunet.sh")
    cfg = load_config(args.config)
    train_cases, val_cases = split_cases(cfg.data, ROOT)
    if args.max_patients:
        train_cases, val_cases = train_cases[: args.max_patients], val_cases[: max(1, args.max_patients // 4)]
    work = Path(args.work_dir).resolve()
    raw, pre, results = work / "raw", work / "preprocessed", work / "results"
    out = Path(args.out or ROOT / "training" / "runs" / "exp" / f"nnunet_{args.configuration}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(results),
               OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), nnUNet_compile="false",
               nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1")
    record = {"method": f"nnU-Net v2 {args.configuration}", "budget_min": args.budget_min, "threads": args.threads,
              "device": args.device, "steps": []}
    name = dataset_name(args.dataset_id, args.dataset_name)
    with open(out / "pipeline.log", "a") as log:
        t = time.perf_counter()
        folder = export_raw(train_cases, val_cases, raw, args.dataset_id, args.dataset_name, cfg.data.target)
        record["steps"].append({"step": "export", "seconds": round(time.perf_counter() - t, 1), "folder": str(folder)})
        common = ["--dataset", name, "--configuration", args.configuration, "--threads", str(args.threads),
                  "--device", args.device]
        t = time.perf_counter()
        step = _runner(str(python), ["plan", *common], env, log)
        record["steps"].append({"step": "plan", **step, "seconds": round(time.perf_counter() - t, 1)})
        t = time.perf_counter()
        step = _runner(str(python), ["train", *common, "--budget-min", f"{args.budget_min:g}",
                                     "--report", str(out / "train.json")], env, log)
        record["steps"].append({"step": "train", **step, "seconds": round(time.perf_counter() - t, 1)})
        trained = json.loads((out / "train.json").read_text())
        t = time.perf_counter()
        pred_dir = out / "predictions"
        step = _runner(str(python), ["predict", *common, "--input", str(folder / "imagesTs"), "--output", str(pred_dir),
                                     "--report", str(out / "predict.json")], env, log)
        predict_s = time.perf_counter() - t
        record["steps"].append({"step": "predict", **step, "seconds": round(predict_s, 1)})
    predicted = json.loads((out / "predict.json").read_text())
    rows = evaluate_predictions(pred_dir, val_cases, predicted["seconds"] / max(len(val_cases), 1))
    (out / "eval").mkdir(exist_ok=True)
    write_rows(rows, out / "eval" / "per_patient.csv")
    meta = {"method": record["method"], "split": "validation", "patients": len(val_cases), "device": args.device,
            "prediction seconds (all patients, model loaded once)": f"{predicted['seconds']:.0f}"}
    (out / "eval" / "summary.md").write_text(summary_markdown(rows, "Evaluation (nnU-Net)", meta))
    record.update(params=trained["params"], git_commit=git_commit(),
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    (out / "pipeline.json").write_text(json.dumps(record, indent=1))
    # the fields training.comparison.experiments reads from our own runs' summary.json
    summary = {"kind": "segmenter", "network": record["method"], "stop_reason": trained["stop_reason"],
               "wall_seconds": trained["seconds"], "slices_seen": trained["slices_seen"],
               "epochs_completed": trained["epochs"], "config": {"time_budget_min": args.budget_min},
               "git_commit": record["git_commit"], "nnunet": trained}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print((out / "eval" / "summary.md").read_text())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.comparison.nnunet", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="export, plan, train under a budget, predict the validation patients, evaluate")
    r.add_argument("--configuration", choices=CONFIGURATIONS, default="2d")
    r.add_argument("--budget-min", type=float, required=True, help="wall-clock budget of nnU-Net's training")
    r.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    r.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    r.add_argument("--config", default=str(ROOT / "training" / "configs" / "exp" / "sanet.json"),
                   help="a training config whose data section gives the patients and split (default: OpenKBP)")
    r.add_argument("--dataset-id", type=int, default=501)
    r.add_argument("--dataset-name", default="OpenKBPPTV70")
    r.add_argument("--work-dir", default=str(ROOT / "training" / "runs" / "nnunet_work"),
                   help="nnUNet_raw / nnUNet_preprocessed / nnUNet_results go under this folder")
    r.add_argument("--out", help="run folder (default training/runs/exp/nnunet_<configuration>)")
    r.add_argument("--nnunet-python", default=str(ROOT / ".venv-nnunet" / "bin" / "python"))
    r.add_argument("--max-patients", type=int, help="smoke runs: this many training patients")
    args = p.parse_args(argv)
    try:
        if args.budget_min <= 0 or args.threads < 1:
            raise GTVError("--budget-min must be > 0 and --threads >= 1")
        return run(args)
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
