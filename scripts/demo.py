"""Segment one real CT with the default model and show what came out.

    bash scripts/run.sh                                  # OpenKBP validation pt_201 from ../shared/data
    bash scripts/run.sh --case pt_207                    # another validation patient
    bash scripts/run.sh --input CT [--reference MASK]    # any CT file or DICOM folder

Writes NAME.seg.nrrd, NAME_label.nii.gz, NAME_overview.png and NAME_report.json under --output
(default out/) and prints the Dice against the physician's PTV70 when one is there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPENKBP_VALIDATION = ROOT.parent / "shared" / "data" / "openkbp" / "validation"


def main() -> int:
    from GTVAutoSegLib.device import DEVICE_HELP

    p = argparse.ArgumentParser(description="Segment one CT with the default GTVAutoSeg model.")
    p.add_argument("--input", help="CT file (NIfTI/NRRD/MHA) or DICOM folder; default: an OpenKBP validation case")
    p.add_argument("--reference", help="reference mask for a Dice (default for OpenKBP: rois/PTV70.nii.gz)")
    p.add_argument("--case", default="pt_201", help="OpenKBP validation patient when --input is not given")
    p.add_argument("--output", default=str(ROOT / "out"), help="output folder (default out/)")
    p.add_argument("--model", default=None, help="model name or bundle path (default: the default model)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args()

    if args.input is None:
        case = OPENKBP_VALIDATION / args.case
        if not (case / "ct.nii.gz").exists():
            print(f"demo: no OpenKBP case at {case} (the real data lives in ../shared/data beside the project);\n"
                  f"      pass a CT instead:  bash scripts/run.sh --input /path/to/ct.nii.gz [--reference mask.nii.gz]",
                  file=sys.stderr)
            return 2
        args.input = str(case / "ct.nii.gz")
        ref = case / "rois" / "PTV70.nii.gz"
        if args.reference is None and ref.exists():
            args.reference = str(ref)

    from GTVAutoSegLib.cli import main as cli

    argv = ["segment", args.input, "-o", args.output, "--png", "--device", args.device]
    if args.reference:
        argv += ["--reference", args.reference]
    if args.model:
        argv += ["--model", args.model]
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
