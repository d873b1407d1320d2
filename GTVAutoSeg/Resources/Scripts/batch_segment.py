"""Segment the target volume on many CTs without a GUI, with the same logic the Slicer module uses.

It is a module resource, not a module: Slicer loads every ``.py`` at the top of its scripted-modules
folder as a module, so this lives in ``Resources/Scripts/`` (in the source tree
``GTVAutoSeg/Resources/Scripts/``; installed, ``qt-scripted-modules/Resources/Scripts/``). In 3D Slicer::

    Slicer --no-main-window --python-script GTVAutoSeg/Resources/Scripts/batch_segment.py \\
        --input /data/cases --output /data/gtv [--model NAME_OR_PATH] [--device auto|cpu|cuda:N|mps]

or with plain Python where ``slicer-core`` is installed::

    python GTVAutoSeg/Resources/Scripts/batch_segment.py --input a.nrrd b.nii.gz --output out

Writes ``OUTPUT/<case>.seg.nrrd`` for every case that succeeds (``--format nrrd,seg,rtstruct`` adds
``<case>_seg.dcm`` and ``<case>_rtstruct.dcm`` for DICOM series inputs, referencing the series; a
case's files appear together or not at all) and ``OUTPUT/summary.csv`` with one row per case
(status, target volume, slices, time, and the error of a failed case). A failed case is reported
and the batch goes on. Exit status: 0 all cases segmented, 1 some case failed, 2 usage
error, 3 an unexpected error. No dialog is ever opened.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import sys
import time
import traceback
from pathlib import Path

# <module folder>/Resources/Scripts/batch_segment.py: the module folder holds GTVAutoSegSlicerLib (and,
# installed, GTVAutoSegLib); a source checkout has GTVAutoSegLib one folder higher.
MODULE_DIR = Path(__file__).resolve().parents[2]
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))
if importlib.util.find_spec("GTVAutoSegLib") is None and (MODULE_DIR.parent / "GTVAutoSegLib").is_dir():
    sys.path.insert(0, str(MODULE_DIR.parent))

SUMMARY_FIELDS = ("case", "input", "status", "segmentation", "target", "volume_cc", "slices_segmented",
                  "slices_total", "review_slices", "seconds", "error", "dicom")
# What a case can be written as here (GTVAutoSegLib.outputs.OUTPUT_FORMATS has the file names).
BATCH_FORMATS = ("nrrd", "seg", "rtstruct")
EXIT_OK, EXIT_FAILED_CASES, EXIT_USAGE, EXIT_CRASHED = 0, 1, 2, 3


def uniqueNames(paths: list[Path]) -> list[str]:
    from GTVAutoSegLib.cli import case_name

    names, seen = [], {}
    for path in paths:
        name = case_name(path) if path.exists() else path.name.split(".")[0]
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


def writeSummary(rows: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from GTVAutoSegLib.outputs import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def segmentCase(path: Path, name: str, outputDir: Path, parameters, formats=("nrrd",)) -> dict:
    """One case in a private scene: load, segment, save as ``formats``. Raises on failure."""
    import slicer

    from GTVAutoSegSlicerLib import SegmentationLogic
    from GTVAutoSegSlicerLib.dicomexport import writeDicom
    from GTVAutoSegSlicerLib.errors import GTVAutoSegError
    from GTVAutoSegSlicerLib.nodes import loadVolume
    from GTVAutoSegSlicerLib.results import ResultNodes

    from GTVAutoSegLib.dicomrt import check_source
    from GTVAutoSegLib.io import read_image
    from GTVAutoSegLib.native import quiet_stderr
    from GTVAutoSegLib.outputs import DICOM_FORMATS, OUTPUT_FORMATS, atomic_outputs

    # The library's reader first: it refuses what Slicer's reader lets through (a truncated NIfTI,
    # NaN voxels, a damaged DICOM series) in one line, and its grid is the one the output must keep.
    inputImage = read_image(path)
    dicomFormats = [f for f in formats if f in DICOM_FORMATS]
    if dicomFormats:  # before the model runs: a SEG/RTSTRUCT needs a series it can reference
        check_source(inputImage.source, path.name)
    scene = slicer.vtkMRMLScene()  # never the user's scene; dropped after the case
    try:
        with quiet_stderr("VTK"):  # vtkITK's multi-line errors; the reason is in the exception
            volume = loadVolume(scene, path, name)
        run = SegmentationLogic(scene).process(volume, parameters=parameters, waitForCompletion=True)
        seg = run.segmentationNode
        targets = {fmt: outputDir / f"{name}{OUTPUT_FORMATS[fmt]}" for fmt in formats}
        with atomic_outputs(targets.values()) as tmps:  # the case's files all or none
            tmp = dict(zip(targets, tmps))
            if "nrrd" in tmp:
                seg.AddDefaultStorageNode()
                storage = seg.GetStorageNode()
                storage.SetFileName(str(tmp["nrrd"]))
                if not storage.WriteData(seg) or not tmp["nrrd"].is_file():
                    raise GTVAutoSegError(f"could not write {targets['nrrd']}")
                keepInputGrid(tmp["nrrd"], inputImage)
            if dicomFormats:
                writeDicom(ResultNodes.of(scene, seg), {f: tmp[f] for f in dicomFormats})
        report = run.report
        return {"segmentation": targets["nrrd"].name if "nrrd" in targets else "",
                "dicom": " ".join(targets[f].name for f in dicomFormats),
                "target": report.get("model", {}).get("target", ""),
                "volume_cc": report.get("volume_cc", ""),
                "slices_segmented": report.get("slices_segmented", ""), "slices_total": report.get("slices_total", ""),
                "review_slices": " ".join(str(r.sliceIndex) for r in run.reviewSlices)}
    finally:
        scene.Clear(1)


def keepInputGrid(segPath: Path, inputImage) -> None:
    """Slicer writes a left-handed grid's slice axis reversed; put the file back on the input's grid."""
    from GTVAutoSegLib.segfile import regrid_seg_nrrd

    regrid_seg_nrrd(segPath, inputImage)


def buildParser() -> argparse.ArgumentParser:
    from GTVAutoSegLib.device import DEVICE_HELP

    p = argparse.ArgumentParser(prog="batch_segment.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="CT files and/or folders")
    p.add_argument("--output", required=True, help="output folder (created if missing)")
    p.add_argument("--model", default=None, help="model name from Models.json or a bundle path (default: the default model)")
    p.add_argument("--device", default="auto", type=_deviceName, help=DEVICE_HELP)
    p.add_argument("--threshold", type=float, default=None, help="classifier threshold (default: the model's)")
    p.add_argument("--review-margin", type=float, default=0.1, help="list slices this close to the threshold")
    p.add_argument("--surface", action="store_true", help="also store the closed surface in each .seg.nrrd")
    p.add_argument("--format", type=_formats, default=("nrrd",), metavar="LIST",
                   help=f"what to write per case, comma-separated from {', '.join(BATCH_FORMATS)} (default nrrd); "
                        "seg (DICOM SEG) and rtstruct need DICOM series inputs")
    return p


def _formats(text: str) -> tuple[str, ...]:
    from GTVAutoSegLib.errors import GTVError
    from GTVAutoSegLib.outputs import parse_formats

    try:
        formats = parse_formats(text)
    except GTVError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    other = [f for f in formats if f not in BATCH_FORMATS]
    if other:
        raise argparse.ArgumentTypeError(f"the batch script writes {', '.join(BATCH_FORMATS)}, not {', '.join(other)}")
    return formats


def _deviceName(text: str) -> str:
    from GTVAutoSegLib.device import check_device_name
    from GTVAutoSegLib.errors import GTVError

    try:
        return check_device_name(text)
    except GTVError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    args = buildParser().parse_args(argv)

    from GTVAutoSegSlicerLib import SegmentationParameters
    from GTVAutoSegSlicerLib.dependencies import ensureDependencies

    try:
        import slicer  # noqa: F401  (slicer-core or Slicer itself)
    except ImportError:
        print("batch_segment: error: the 'slicer' package is not available; run inside 3D Slicer or "
              "install slicer-core", file=sys.stderr)
        return EXIT_USAGE
    outputDir = Path(args.output)
    try:
        outputDir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"batch_segment: error: cannot create {outputDir}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from GTVAutoSegLib.filetypes import find_cases

    cases = find_cases(args.input)
    if not cases:
        print("batch_segment: error: no CT found in the inputs", file=sys.stderr)
        return EXIT_USAGE
    parameters = SegmentationParameters(model=args.model, device=args.device, threshold=args.threshold,
                                        reviewMargin=args.review_margin, createSurface=args.surface)
    try:
        parameters.check()
        if hasattr(slicer, "app"):
            ensureDependencies(confirm=None)  # never asks: this runs headless
    except Exception as exc:
        print(f"batch_segment: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    rows, failed = [], 0
    summaryPath = outputDir / "summary.csv"
    for number, (path, name) in enumerate(zip(cases, uniqueNames(cases)), start=1):
        started = time.monotonic()
        row = {"case": name, "input": str(path)}
        try:
            row.update(segmentCase(path, name, outputDir, parameters, args.format))
            row["status"] = "ok"
            line = (f"ok, {row['target']} {float(row['volume_cc']):.1f} cc on {row['slices_segmented']}/"
                    f"{row['slices_total']} slices")
        except Exception as exc:  # one bad case must not stop the batch
            failed += 1
            message = " ".join(str(exc).split()) or type(exc).__name__
            row.update(status="failed", error=message)
            line = f"FAILED: {message}"
            print(f"batch_segment: {name}: error: {message}", file=sys.stderr, flush=True)
        row["seconds"] = f"{time.monotonic() - started:.1f}"
        rows.append(row)
        writeSummary(rows, summaryPath)  # after every case, so an interrupted batch keeps its record
        print(f"[{number}/{len(cases)}] {name}: {line} ({row['seconds']} s)", flush=True)
    print(f"{len(cases) - failed} of {len(cases)} case(s) segmented; summary: {summaryPath}", flush=True)
    return EXIT_FAILED_CASES if failed else EXIT_OK


def run(argv: list[str]) -> int:
    """``main`` that never lets an exception out: inside Slicer an escaped exception (argparse's
    SystemExit included) would leave a ``--no-main-window`` Slicer running forever."""
    try:
        return main(argv)
    except SystemExit as exc:  # usage errors and --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except BaseException:  # noqa: BLE001  a bug, or Ctrl+C: report and leave
        traceback.print_exc()
        return EXIT_CRASHED


def _exit(status: int) -> None:
    try:
        import slicer

        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is not None:
        slicer.util.exit(status)  # let Slicer leave its event loop with this status
    else:
        sys.exit(status)


if __name__ == "__main__":
    _exit(run(sys.argv[1:]))
