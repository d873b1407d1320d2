"""``gtvautoseg``: segment CTs, evaluate masks, describe models.

Every user-fixable problem ends as one line on stderr and exit status 2; outputs are written
under temporary names and renamed, so a failed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import csv
import io as _io
import json
import sys
import time
import warnings
from pathlib import Path

from .device import DEVICE_HELP, ENGINE_HELP, ENGINES, PRECISION_HELP, PRECISIONS
from .errors import Cancelled, GTVError
from .filetypes import image_suffix, strip_image_suffix
from .native import python_stderr_apart
from .outputs import DEFAULT_FORMATS, DICOM_FORMATS, OUTPUT_FORMATS, Terminated, parse_formats, terminate_as_interrupt

GENERIC_STEMS = {"ct", "image", "data", "imaging", "volume", "img"}


def case_name(path: Path) -> str:
    """``pt_201/ct.nii.gz`` -> ``pt_201``; ``lung1_image.nrrd`` -> ``lung1_image``; a DICOM folder -> its name."""
    if path.is_dir():
        return path.resolve().name
    name = strip_image_suffix(path.name)
    if name.lower() in GENERIC_STEMS:
        return path.resolve().parent.name
    return name


class _Progress:
    """Progress as a tqdm bar (humans) or as parseable lines (the Slicer module reads these)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.bar = None
        if mode == "bar" and sys.stderr.isatty():  # a bar in a log file is noise
            from tqdm import tqdm

            self.bar = tqdm(total=100, desc="segment", unit="%", file=sys.stderr, leave=False,
                            bar_format="{desc:<22}{bar}| {n:3.0f}% [{elapsed}]")
        self.weights = {"read": (0, 5), "preprocess": (5, 15), "classifier": (15, 45),
                        "segmenter": (45, 85), "inverse": (85, 95), "write": (95, 100)}

    def __call__(self, stage: str, fraction: float) -> None:
        lo, hi = self.weights.get(stage, (0, 100))
        total = lo + (hi - lo) * max(0.0, min(1.0, fraction))
        if self.mode == "lines":
            print(f"PROGRESS {total:.1f} {stage}", flush=True)
        elif self.bar is not None:
            self.bar.set_description_str(stage)
            self.bar.n = total
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _case_names(args: argparse.Namespace, inputs: list[Path]) -> list[str]:
    """One output name per input, each a plain file name; two inputs giving one name are refused
    (the second would overwrite the first's outputs), also when they differ only in case."""
    from .outputs import check_case_name

    names = [check_case_name(args.name if args.name is not None else case_name(p)) for p in inputs]
    seen: dict[str, Path] = {}
    for name, path in zip(names, inputs):
        other = seen.setdefault(name.casefold(), path)
        if other is not path:
            raise GTVError(f"inputs {other} and {path} both give the case name '{name}', so one would overwrite "
                           "the other's outputs; run them into different -o folders")
    return names


# What one case writes, in the order the files are renamed into place (the report last: it is the
# sign that a case is complete).
def _case_outputs(outdir: Path, name: str, formats: tuple[str, ...], png: bool) -> dict[str, Path]:
    paths = {fmt: outdir / f"{name}{OUTPUT_FORMATS[fmt]}" for fmt in formats}
    if png:
        paths["png"] = outdir / f"{name}_overview.png"
    paths["report"] = outdir / f"{name}_report.json"
    return paths


def open_segmenter(args: argparse.Namespace):
    """The model and its :class:`Segmenter` as the ``segment`` flags ask (a listed model not here
    yet is downloaded first, with progress). Built once per process: ``gtvautoseg batch`` workers
    keep it for all their cases. ``--engine`` picks ONNX Runtime or torch (:func:`_use_onnx`)."""
    from .bundle import PostprocessSpec, resolve_model
    from .catalog import prefetch
    from .pipeline import Segmenter

    fetching = _Progress(args.progress)
    prefetch(args.model, progress=fetching)  # a listed model not here yet is downloaded now, with progress
    fetching.close()
    path, sha, entry = resolve_model(args.model)
    nets = _onnx_model(args, path, sha, listed=entry is not None)
    if nets is not None:
        bundle = nets.bundle
    else:
        from .bundle import load_bundle

        bundle = load_bundle(path, expected_sha256=sha)
    post = None
    if args.keep_largest is not None:
        post = PostprocessSpec(keep_largest=args.keep_largest,
                               min_component_cc=bundle.postprocess.min_component_cc)
    return Segmenter(bundle, device=args.device, threshold=args.threshold, use_classifier=not args.no_classifier,
                     postprocess=post, precision=args.precision, nets=nets)


def _note(message: str) -> None:
    """A line for the user that is neither an error nor a result (the ONNX export). sys.stderr is a
    duplicate of fd 2 under main() (native.python_stderr_apart): a read-ahead thread's redirection
    of fd 2 does not swallow it."""
    print(f"gtvautoseg: {message}", file=sys.stderr, flush=True)


def _onnx_model(args: argparse.Namespace, path: Path, sha: str | None, listed: bool):
    """The model under ONNX Runtime (``onnxnets.OnnxModel``) when ``--engine`` asks for it, or
    None for torch.

    ``onnx`` always (exported on first use; refused with torch's device or precision flags);
    ``auto`` when onnxruntime is installed, the run is fp32 on the CPU (``--device cpu``, or
    ``auto`` with no NVIDIA driver on the machine) and the model is a listed one (exported on first
    use) or a bundle exported before; if the export fails, one line says so and torch runs."""
    from . import onnxnets

    engine = getattr(args, "engine", "auto")
    if engine == "torch":
        return None
    use_classifier = not args.no_classifier
    if engine == "onnx":
        if not onnxnets.runtime_available():
            raise GTVError("--engine onnx needs onnxruntime (pip install onnxruntime onnx)")
        onnxnets.OnnxModel.check_run_options(args.device, args.precision)
        return onnxnets.open_onnx(path, sha, export=True, use_classifier=use_classifier, note=_note)
    cpu = args.device == "cpu" or (args.device == "auto" and not onnxnets.nvidia_driver_visible())
    if not (cpu and args.precision in ("auto", "fp32") and onnxnets.runtime_available()):
        return None
    can_export = listed and onnxnets.exporter_available()
    try:
        return onnxnets.open_onnx(path, sha, export=can_export, use_classifier=use_classifier, note=_note)
    except onnxnets.NotExported:
        return None
    except (onnxnets.ExportFailed, onnxnets.EngineUnavailable) as exc:  # a wrong bundle is raised: torch refuses it too
        _note(f"{exc}; running it on torch")
        return None


def _cmd_segment(args: argparse.Namespace, segmenter=None, read_image=None, quiet: bool = False) -> int:
    """``segmenter``: one already built by :func:`open_segmenter` with the same flags (a batch
    worker's), else it is built here. ``read_image``: path -> :class:`Image` as ``io.read_image``
    reads it (else each case is read ahead, the first while the model loads). ``quiet``: no
    one-line summary per case (a batch has its CSV)."""
    from . import io
    from .inputcheck import check_input_path
    from .outputs import atomic_outputs, name_max, prepare_output_dir, refuse_overwriting_inputs
    from .report import case_report, write_json, write_overview_png
    from .dicomrt import ResultDescription, on_series_grid
    from .dicomwriters import write_dicom
    from .segfile import Terminology, target_color, write_seg_nrrd

    inputs = [Path(p) for p in args.input]
    for p in inputs:
        check_input_path(p)
    if args.reference:
        check_input_path(Path(args.reference), "reference")
    if args.reference and len(inputs) != 1:
        raise GTVError("--reference goes with exactly one input")
    formats = args.format
    dicom_reference = _dicom_reference(args, inputs, formats)
    names = _case_names(args, inputs)
    outdir = prepare_output_dir(args.output)
    for name in names:
        longest = max(_case_outputs(outdir, name, formats, args.png).values(), key=lambda q: len(q.name.encode()))
        if len(longest.name.encode()) > name_max(outdir):
            raise GTVError(f"case name '{name[:40]}...' is too long: {longest.name[:40]}... would pass the file "
                           f"system's {name_max(outdir)}-byte limit; use --name")
    selection = _slice_selection(args)
    if selection is not None and len(inputs) != 1:
        raise GTVError("slice choices (--include-slices and the like) go with exactly one input")
    reader = read_image
    if reader is None:  # each case read ahead: the first while torch loads, the next during this one
        reader = io.ReadAhead()
        reader.start(inputs[0])
    seg = segmenter if segmenter is not None else open_segmenter(args)
    bundle = seg.bundle
    terminology = Terminology.for_target(bundle.target, bundle.anatomic_region or None)
    description = ResultDescription.of_bundle(bundle)
    model_file = Path(args.model) if args.model and Path(args.model).is_file() else None
    guarded = [*inputs, args.reference, args.dicom_reference, model_file]
    failures = 0
    for i, (path, name) in enumerate(zip(inputs, names)):
        if read_image is None and i + 1 < len(inputs):
            reader.start(inputs[i + 1])
        progress = _Progress(args.progress)
        try:
            targets = _case_outputs(outdir, name, formats, args.png)
            refuse_overwriting_inputs(targets.values(), guarded)
            t0 = time.perf_counter()
            progress("read", 0.0)
            ct = io.check_ct(reader(path), path)
            series = _dicom_series(ct, dicom_reference, path) if set(formats) & set(DICOM_FORMATS) else None
            reference = io.read_mask(Path(args.reference), like=None) if args.reference else None
            if reference is not None and not reference.same_grid(ct):
                reference = io.resample_to(reference, ct, nearest=True)
            t_read = time.perf_counter() - t0
            result = seg(ct, progress=progress, selection=selection)
            t = time.perf_counter()
            progress("write", 0.0)
            report = case_report(name, path, bundle, seg.device, result, selection,
                                 {fmt: p for fmt, p in targets.items() if fmt in OUTPUT_FORMATS},
                                 series=series, reference=reference, reference_path=args.reference)
            # All files of the case under temporary names first; renamed together at the end.
            with atomic_outputs(targets.values()) as tmps:
                tmp = dict(zip(targets, tmps))
                if "nrrd" in tmp:
                    write_seg_nrrd(result.mask, tmp["nrrd"], name=bundle.target, color=target_color(bundle.target),
                                   terminology=terminology)
                if "nifti" in tmp:
                    io.write_labelmap(result.mask, tmp["nifti"])
                for fmt in DICOM_FORMATS:
                    if fmt in tmp:
                        write_dicom(fmt, on_series_grid(result.mask, series, f"the result of {path}"), tmp[fmt],
                                    description)
                if args.png:
                    write_overview_png(ct, result.mask, tmp["png"], title=f"{name}: {bundle.name} {bundle.version}",
                                       reference=reference, window=tuple(bundle.preprocess.window))
                t_write = time.perf_counter() - t
                timings = {"read": t_read, **result.timings, "write": t_write, "total": time.perf_counter() - t0}
                report["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
                write_json(report, tmp["report"])
            progress("write", 1.0)
            progress.close()
            line = (f"{name}: {bundle.target} {report['volume_cc']:.1f} cc on {report['slices_segmented']}/"
                    f"{report['slices_total']} slices in {timings['total']:.2f} s -> "
                    f"{', '.join(str(targets[f]) for f in formats)}")
            if reference is not None:
                line += f"; Dice vs reference {report['reference']['dice']:.3f}"
            if not quiet:
                print(line, flush=True)
        except Cancelled:
            progress.close()
            raise
        except GTVError as exc:
            progress.close()
            if len(inputs) == 1:
                raise
            failures += 1
            print(f"gtvautoseg: error: {path}: {exc}", file=sys.stderr, flush=True)
        except BaseException:
            progress.close()
            raise
    return 2 if failures else 0


def _dicom_reference(args: argparse.Namespace, inputs: list[Path], formats: tuple[str, ...]):
    """The series of ``--dicom-reference`` (read and checked now, before any model runs), or None.

    DICOM SEG and RTSTRUCT reference the series the CT came from; an input that is not DICOM has
    none, so they need ``--dicom-reference`` for it, and a DICOM input is its own reference.
    """
    from .dicomrt import check_writers, is_dicom_input, read_reference_series

    wanted = [f for f in formats if f in DICOM_FORMATS]
    check_writers(wanted)
    if args.dicom_reference is None:
        if wanted:
            for path in inputs:
                if not is_dicom_input(path):
                    raise GTVError(f"--format {','.join(wanted)} needs a DICOM series to reference, and {path} is not "
                                   "DICOM; give the series it was converted from with --dicom-reference DIR")
        return None
    if not wanted:
        raise GTVError("--dicom-reference goes with --format seg and/or rtstruct")
    if len(inputs) != 1:
        raise GTVError("--dicom-reference goes with exactly one input")
    if is_dicom_input(inputs[0]):
        raise GTVError(f"{inputs[0]} is DICOM and so its own reference; --dicom-reference is for a NIfTI/NRRD input")
    return read_reference_series(Path(args.dicom_reference))


def _dicom_series(ct, dicom_reference, path: Path):
    """The DICOM series a SEG/RTSTRUCT of ``ct``'s result references, checked before segmenting."""
    from .dicomrt import check_source, on_series_grid

    if dicom_reference is None:
        check_source(ct.source, str(path))
        return ct
    on_series_grid(ct, dicom_reference, str(path))  # the result will lie on the CT's grid
    return dicom_reference


def _formats(text: str) -> tuple[str, ...]:
    try:
        return parse_formats(text)
    except GTVError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _slice_selection(args: argparse.Namespace):
    """The reviewer's slice choices from the flags and ``--slice-file``, or None."""
    from .slices import SliceSelection, parse_slice_list

    only = parse_slice_list(args.only_slices) if args.only_slices is not None else None
    selection = SliceSelection(parse_slice_list(args.include_slices or ""), parse_slice_list(args.exclude_slices or ""), only)
    if args.slice_file:
        selection = selection.merged(SliceSelection.from_file(args.slice_file))
    return None if selection.empty else selection


def _device_name(text: str) -> str:
    from .device import check_device_name

    try:
        return check_device_name(text)
    except GTVError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mask_pairs(pred: Path, ref: Path) -> list[tuple[str, Path, Path]]:
    if pred.is_file() and ref.is_file():
        return [(case_name(ref), pred, ref)]
    if pred.is_dir() and ref.is_dir():
        def index(folder: Path) -> dict[str, Path]:
            found = {}
            for f in sorted(folder.iterdir()):
                if f.is_file() and image_suffix(f.name):
                    key = case_name(f).removesuffix("_label").removesuffix("_mask")
                    found.setdefault(key, f)
            return found

        p, r = index(pred), index(ref)
        common = sorted(set(p) & set(r))
        if not common:
            raise GTVError(f"no case names in common between {pred} and {ref}")
        return [(k, p[k], r[k]) for k in common]
    raise GTVError("PRED and REF must both be files or both be folders")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import io
    from .metrics import evaluate_case, summarise

    from .inputcheck import check_input_path
    from .outputs import refuse_overwriting_inputs
    from .report import json_safe

    pred, ref = Path(args.pred), Path(args.ref)
    for p, what in ((pred, "PRED"), (ref, "REF")):
        check_input_path(p, what)
    if args.csv:
        refuse_overwriting_inputs([Path(args.csv)], [pred, ref])
    rows = []
    for name, p, r in _mask_pairs(pred, ref):
        m = evaluate_case(io.read_mask(p), io.read_mask(r))
        rows.append({"case": name, **{k: json_safe(v) for k, v in m.items()}})
    summary = summarise([{k: v for k, v in row.items() if k != "case"} for row in rows])
    buf = _io.StringIO()
    fields = list(rows[0].keys())
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    mean_row = {"case": "mean"}
    for k in fields[1:]:
        stats = summary.get(k)
        mean_row[k] = stats.get("mean") if isinstance(stats, dict) else ""
    writer.writerow(mean_row)
    if args.csv:
        from .outputs import atomic_output

        with atomic_output(Path(args.csv)) as tmp:
            Path(tmp).write_text(buf.getvalue())
    sys.stdout.write(buf.getvalue())
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .bundle import list_models, resolve_model, load_bundle
    from .models import build_network, count_parameters

    if args.model is None and args.list:
        for e in list_models():
            print(f"{e.name}@{e.version}{' (default)' if e.default else ''}  {e.file}  sha256={e.sha256[:12]}  {e.title}")
        return 0
    from .bundle import sha256_file
    from .onnxnets import cache_folder, read_manifest, unsupported_reason

    path, sha, entry = resolve_model(args.model)
    bundle = load_bundle(path, expected_sha256=sha)
    meta = bundle.meta()
    meta["file"] = str(path)
    # every network the model has (0.2.0 has no classifier, 0.1.0 no locator)
    meta["parameters"] = {role: count_parameters(build_network(cfg)) for role in ("classifier", "segmenter", "locator")
                          if (cfg := getattr(bundle, role)) is not None}
    folder = cache_folder(sha or sha256_file(path))
    reason = unsupported_reason(folder)
    state = ("exported" if read_manifest(folder, folder.name) is not None else
             f"cannot be exported: {reason}" if reason else "not exported yet (the first --engine onnx run exports it)")
    meta["onnx_export"] = {"folder": str(folder), "state": state}
    if entry is not None and entry.card:
        meta["model_card"] = entry.card
    print(json.dumps(meta, indent=2))
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    """Export a model for ONNX Runtime now (a cluster's shared cache, a read-only home later)."""
    from . import onnxnets
    from .bundle import resolve_model
    from .catalog import prefetch

    if not onnxnets.runtime_available():
        raise GTVError("exporting for ONNX Runtime needs onnxruntime and onnx (pip install 'gtvautoseg[onnx]')")
    prefetch(args.model)
    path, sha, _ = resolve_model(args.model)
    model = onnxnets.open_onnx(path, sha, export=True, note=_note)
    print(f"{model.bundle.name} {model.bundle.version}: ONNX export in {model.folder}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from GTVAutoSegWeb.server import serve  # trame and slicer-core only for this command

    return serve(args.host, args.port, args.data, args.output, args.allow_remote, args.max_upload_mb)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line on stderr and exit status 2, like every other refusal."""

    def error(self, message: str):
        self.exit(2, f"gtvautoseg: error: {message} (see {self.prog} --help)\n")


def _probability(text: str) -> float:
    """``--threshold``: a number in [0, 1]; nan, inf and out-of-range values are refused, not
    turned into an empty GTV or a switched-off classifier."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0.0 <= value <= 1.0):  # also false for nan
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """The flags that choose and run the model, the same for ``segment`` and ``batch``."""
    parser.add_argument("--model", default=None,
                        help="model name from Resources/Models.json or a bundle path (default: the default model)")
    parser.add_argument("--device", default="auto", type=_device_name, help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    parser.add_argument("--engine", default="auto", choices=ENGINES, help=ENGINE_HELP)
    parser.add_argument("--threshold", type=_probability, default=None,
                        help="slice probability threshold in [0, 1]: the classifier's, or the locator's for a model "
                             "whose 3D locator picks the slices (default: the model's)")
    parser.add_argument("--keep-largest", type=int, default=None, metavar="N",
                        help="keep only the N largest 3D components (0 keeps all)")
    parser.add_argument("--no-classifier", action="store_true", help="run the segmenter on every slice (no cascade)")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="gtvautoseg",
        description="Gross tumour volume segmentation on CT (ResNet18 slice classifier + SANet cascade). "
                    "Research use only.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment one or more CTs",
                       description="Segment CT files (NIfTI, NRRD, MHA) or DICOM series folders. Writes "
                                   "NAME.seg.nrrd (3D Slicer segmentation), NAME_label.nii.gz and NAME_report.json "
                                   "into OUTDIR, all on the input's exact grid; with --format also NAME_seg.dcm "
                                   "(DICOM SEG) and NAME_rtstruct.dcm (RTSTRUCT) referencing the DICOM series.")
    s.add_argument("input", nargs="+", help="CT file(s) or DICOM folder(s)")
    s.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    _add_model_options(s)
    s.add_argument("--include-slices", metavar="LIST", help="also segment these slices (e.g. 12,14-17; K indices from 0)")
    s.add_argument("--exclude-slices", metavar="LIST", help="leave these slices empty whatever the classifier says")
    s.add_argument("--only-slices", metavar="LIST", help="segment exactly these slices; the classifier does not run")
    s.add_argument("--slice-file", metavar="JSON", help='slice choices as {"include": [...], "exclude": [...]} or {"only": [...]}')
    s.add_argument("--reference", default=None, help="a reference mask: report Dice etc. against it")
    s.add_argument("--png", action="store_true", help="also write NAME_overview.png (axial/coronal/sagittal)")
    s.add_argument("--format", type=_formats, default=DEFAULT_FORMATS, metavar="LIST",
                   help=f"what to write, comma-separated from {', '.join(OUTPUT_FORMATS)} (default "
                        f"{','.join(DEFAULT_FORMATS)}); seg and rtstruct need a DICOM input or --dicom-reference")
    s.add_argument("--dicom-reference", default=None, metavar="DIR",
                   help="for a NIfTI/NRRD input: the DICOM series folder it was converted from (same voxels), "
                        "which the DICOM SEG/RTSTRUCT reference")
    s.add_argument("--name", default=None, help="case name for output files (one input only; a plain file name)")
    s.add_argument("--progress", default="bar", choices=["bar", "lines", "none"], help="progress display")
    s.set_defaults(func=_cmd_segment)

    e = sub.add_parser("evaluate", help="compare predicted masks with reference masks",
                       description="PRED and REF are two mask files, or two folders matched by case name. Prints a "
                                   "per-case CSV (Dice, Jaccard, HD95 mm, volumes, false-positive slices) and a mean row.")
    e.add_argument("pred")
    e.add_argument("ref")
    e.add_argument("--csv", default=None, help="also write the CSV here")
    e.set_defaults(func=_cmd_evaluate)

    i = sub.add_parser("info", help="describe a model bundle", description="Print a model's configuration, "
                       "preprocessing, threshold, provenance and parameter counts as JSON.")
    i.add_argument("model", nargs="?", default=None, help="model name or bundle path (default: the default model)")
    i.add_argument("--list", action="store_true", help="list the models in Resources/Models.json")
    i.set_defaults(func=_cmd_info)

    x = sub.add_parser("export-onnx", help="export a model for ONNX Runtime into the cache now",
                       description="Export a model's networks for --engine onnx into the cache ($GTVAUTOSEG_CACHE, else "
                                   "~/.cache/gtvautoseg) now instead of on first use: for a cluster's shared cache or "
                                   "a machine whose home is read-only at run time. Checked against torch; an existing "
                                   "intact export is kept.")
    x.add_argument("model", nargs="?", default=None, help="model name or bundle path (default: the default model)")
    x.set_defaults(func=_cmd_export_onnx)

    w = sub.add_parser("serve", help="the web app (3D Slicer views in the browser)",
                       description="Serve the GTVAutoSeg web app: load a CT, segment, review and correct, save.")
    w.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this computer only)")
    w.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    w.add_argument("--data", default=None, metavar="DIR", help="a server folder whose CTs the page can open")
    w.add_argument("--output", default=None, metavar="DIR", help="where Save writes (default ./gtvautoseg-web)")
    w.add_argument("--max-upload-mb", type=float, default=1024.0, help="largest upload accepted (default 1024)")
    w.add_argument("--allow-remote", action="store_true",
                   help="allow a --host other than this computer; the app has NO authentication")
    w.set_defaults(func=_cmd_serve)
    b = sub.add_parser("batch", help="segment a cohort, serially or on a Ray cluster",
                       description="Segment every CT in the inputs (files; a folder gives its CT files, else each "
                                   "subfolder as a DICOM series) into OUTDIR exactly as 'segment' does, with the model "
                                   "loaded once per worker, and write OUTDIR/summary.csv (one row per case). A case "
                                   "that fails is reported and the others go on; exit status 2 if any failed.")
    b.add_argument("input", nargs="+", help="CT files, folders of CT files, or folders of DICOM series")
    b.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray (pip install 'gtvautoseg[ray]'): alone, a local Ray on this machine; with an "
                        "ADDRESS (auto, HOST:6379 or ray://HOST:10001), that cluster")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers, each holding the model (default: the cluster's CPUs / --cpus-per-worker)")
    b.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs Ray reserves per worker (default 1)")
    b.add_argument("--retries", type=int, default=2, metavar="N",
                   help="times a case is retried when its Ray worker dies (default 2)")
    b.add_argument("--summary", default="summary.csv", metavar="NAME", help="summary file name in OUTDIR")
    _add_model_options(b)
    b.add_argument("--format", type=_formats, default=DEFAULT_FORMATS, metavar="LIST",
                   help=f"what to write per case, from {', '.join(OUTPUT_FORMATS)} (default {','.join(DEFAULT_FORMATS)})")
    b.add_argument("--png", action="store_true", help="also write NAME_overview.png per case")
    b.add_argument("--progress", default="bar", choices=["bar", "lines", "none"], help="progress over cases")
    b.set_defaults(func=_cmd_batch)
    return p


class SegmentCommand:
    """The segment command's pieces that ``gtvautoseg batch`` runs per case (raybatch takes them
    from here instead of importing the CLI, which imports raybatch)."""

    build_parser = staticmethod(build_parser)
    open_segmenter = staticmethod(open_segmenter)
    case_outputs = staticmethod(_case_outputs)
    segment = staticmethod(_cmd_segment)
    case_name = staticmethod(case_name)


def _cmd_batch(args: argparse.Namespace) -> int:
    from .raybatch import cmd_batch

    return cmd_batch(args, SegmentCommand)


def main(argv: list[str] | None = None) -> int:
    from .device import passive_cpu_threads

    passive_cpu_threads()  # before anything imports torch
    with python_stderr_apart(), terminate_as_interrupt():
        try:
            return _main(argv)
        except Terminated:
            print("gtvautoseg: terminated", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("gtvautoseg: interrupted", file=sys.stderr)
            return 130


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already printed in one line (2)
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "name", None) is not None and len(getattr(args, "input", [])) > 1:
        print("gtvautoseg: error: --name goes with exactly one input", file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        # vtk/SWIG import noise is not the user's business; our own warnings are UserWarnings.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.formatwarning = lambda msg, cat, *a, **k: f"gtvautoseg: warning: {msg}\n"
        try:
            return args.func(args)
        except Cancelled as exc:
            print(f"gtvautoseg: cancelled: {exc}", file=sys.stderr)
            return 130
        except GTVError as exc:
            print(f"gtvautoseg: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
