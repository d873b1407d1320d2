"""Run about 150 bad, odd and hostile inputs through ``gtvautoseg`` and ``batch_segment.py`` as a user
would (one process each), and count what must never happen.

    .venv/bin/python benchmarks/bad_input_sweep.py              # the sweep, shipped model (~10 min, 2 cores)
    .venv/bin/python benchmarks/bad_input_sweep.py --table      # the README's list of what is refused

Counted per run: an exit status 0 where a refusal was due or with an output off the input's grid or
different from the clean input's ("wrong result"), a Python traceback, a hang (past --timeout), a
changed input file (SHA-256), a leftover temporary file, and a refusal that is not one line with
exit status 2. The cases: every row of ``bad_inputs.json`` (built by ``bad_input_cases.py``), then
truncations at many offsets and flipped bytes in compressed files, damaged real DICOM series, the
batch script, SIGTERM/SIGINT in the middle of a run, a full disk (a file-size limit), and, when run
as root, an unwritable folder and an unreadable input as an unprivileged user.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import bad_input_cases  # noqa: E402
from bad_input_cases import Case, phantom_ct  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "GTVAutoSegLib.cli"]
BATCH = [sys.executable, str(ROOT / "GTVAutoSeg" / "Resources" / "Scripts" / "batch_segment.py")]


def markdown_table() -> str:
    """The refusals of ``bad_inputs.json`` as the README prints them."""
    rows = ["| input | issue 12 item | exit | message contains |", "|---|---|---:|---|"]
    for r in bad_input_cases.table():
        message = f"`{r['message']}`" if r["message"] else "(segmented on its own grid)"
        rows.append(f"| {r['input']} | {r['issue'] or '-'} | {r['exit']} | {message} |")
    return "\n".join(rows)


@dataclass
class Run:
    name: str
    kind: str
    expected: str  # "refuse", "accept", "either"
    rc: int | None = None
    seconds: float = 0.0
    stderr_lines: int = 0
    first_error: str = ""
    problems: list[str] = field(default_factory=list)


def _sha(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths if Path(p).is_file()}


def _leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp-" in p.name or p.name.startswith(".gtvautoseg-probe")
            or (p.name.startswith(".") and p.name.endswith(".tmp.seg.nrrd"))]


def _execute(cmd, timeout, **kw):
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              cwd=ROOT, **kw)
        return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or "", exc.stderr or "", time.monotonic() - started


def _outputs_match(out: Path, reference_input: Path, clean_masks: dict, key: str | None) -> list[str]:
    """An accepted case: outputs exactly on the input's grid (and equal to the clean input's result)."""
    from GTVAutoSegLib.io import read_image

    problems = []
    ct = read_image(reference_input)
    labels = sorted(out.glob("*_label.nii.gz"))
    segs = sorted(out.glob("*.seg.nrrd"))
    reports = sorted(out.glob("*_report.json"))
    if len(labels) != 1 or len(segs) != 1 or len(reports) != 1:
        return [f"wrong result: outputs {sorted(p.name for p in out.iterdir())}"]
    for path in (labels[0], segs[0]):
        image = read_image(path)
        if not image.same_grid(ct):
            problems.append(f"wrong result: {path.name} is off the input's grid")
        elif key is not None and key in clean_masks and not np.array_equal(image.array, clean_masks[key]):
            problems.append(f"wrong result: {path.name} differs from the clean input's result")
    try:
        json.loads(reports[0].read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError as exc:
        problems.append(f"report is not strict JSON ({exc})")
    return problems


def _judge(run: Run, rc, err: str, case_dir: Path, hashes: dict, message: str = "",
           out: Path | None = None, accepted_check=None, refuse_codes=(2,), prefix="gtvautoseg: error:") -> None:
    run.rc = rc
    lines = [line for line in err.strip().splitlines() if line.strip()]
    run.stderr_lines = len(lines)
    run.first_error = lines[0][:200] if lines else ""
    if rc is None:
        run.problems.append("hang")
    if "Traceback (most recent call last)" in err:
        run.problems.append("traceback")
    if _sha(hashes) != hashes:
        run.problems.append("modified input")
    if _leftovers(case_dir):
        run.problems.append(f"temporary files left: {_leftovers(case_dir)[:3]}")
    if rc is None:
        return
    if rc in refuse_codes and run.expected in ("refuse", "either"):
        if run.kind == "cli" and (len(lines) != 1 or not lines[0].startswith(prefix)):
            run.problems.append(f"refusal not in one line ({len(lines)} lines)")
        if message and message.lower() not in err.lower():
            run.problems.append(f"message lacks {message!r}")
        if out is not None and out.is_dir() and out.name == "out" and any(out.iterdir()):
            run.problems.append("output written for a refused input")
    elif rc == 0 and run.expected in ("accept", "either"):
        if accepted_check is not None:
            run.problems += accepted_check()
    elif rc == 0:
        run.problems.append("wrong result: exit 0 on an input that must be refused")
    else:
        run.problems.append(f"unexpected exit status {rc}")


class Sweep:
    def __init__(self, work: Path, model: Path, timeout: float):
        self.work, self.model, self.timeout = work, model, timeout
        self.runs: list[Run] = []
        self.clean_masks: dict[str, np.ndarray] = {}

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True)
        return path

    def record(self, run: Run) -> None:
        self.runs.append(run)
        status = "ok " if not run.problems else "BAD"
        print(f"{status} {len(self.runs):3d} {run.name:<40} rc={run.rc} {run.seconds:5.1f}s "
              f"{'; '.join(run.problems) or run.first_error[:90]}", flush=True)

    # --------------------------------------------------------------------------- the cases

    def clean_reference(self) -> None:
        """The clean phantom's mask, to compare with accepted damaged copies."""
        from GTVAutoSegLib.io import read_image

        folder = self.folder("clean")
        for name, ext in (("nii.gz", "ct.nii.gz"), ("nrrd_gz", "ct.nrrd")):
            path = folder / ext
            bad_input_cases._write(phantom_ct(), path)
            rc, _, err, _ = _execute([*CLI, "segment", str(path), "-o", str(folder / name), "--model",
                                      str(self.model), "--device", "cpu", "--progress", "none"], self.timeout)
            if rc != 0:
                raise SystemExit(f"the clean phantom does not segment: {err}")
            self.clean_masks[name] = read_image(next((folder / name).glob("*_label.nii.gz"))).array

    def table(self) -> None:
        for row in bad_input_cases.table():
            if row.get("needs") == "shared_data" and not SHARED.is_dir():
                continue
            folder = self.folder(f"table/{row['id']}")
            case = bad_input_cases.build(row["id"], folder, self.model, SHARED)
            hashes = _sha(case.inputs)
            rc, _, err, seconds = _execute([*CLI, *case.argv], self.timeout)
            run = Run(f"table:{row['id']}", "cli", "refuse" if row["exit"] else "accept", seconds=seconds)
            check = (lambda c=case: _outputs_match(c.out, c.reference_input, self.clean_masks, None))
            _judge(run, rc, err, folder, hashes, row["message"], case.out, check)
            self.record(run)

    def damaged_files(self) -> None:
        """Truncations at many offsets, flipped bytes inside compressed data."""
        import SimpleITK as sitk

        ct = phantom_ct()
        formats = {"nii.gz": ("ct.nii.gz", True), "nii": ("ct.nii", False), "nrrd_raw": ("ct.nrrd", False),
                   "nrrd_gz": ("ct.nrrd", True), "mha": ("ct.mha", False)}
        for key, (filename, compress) in formats.items():
            for fraction in (0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99, "last"):
                folder = self.folder(f"cut/{key}-{fraction}")
                path = folder / filename
                sitk.WriteImage(ct.to_sitk(), str(path), useCompression=compress)
                data = path.read_bytes()
                cut = len(data) - 1 if fraction == "last" else int(len(data) * fraction)
                path.write_bytes(data[:cut])
                self._cli_case(f"cut:{key}@{fraction}", folder, path, "refuse", "")
        for key, (filename, _) in (("nii.gz", formats["nii.gz"]), ("nrrd_gz", formats["nrrd_gz"])):
            rng = np.random.default_rng(12)
            for k in range(10):
                folder = self.folder(f"flip/{key}-{k}")
                path = folder / filename
                sitk.WriteImage(ct.to_sitk(), str(path), useCompression=True)
                data = bytearray(path.read_bytes())
                start = 400 if key == "nrrd_gz" else 20  # past the NRRD text header / gzip header
                position = int(rng.integers(start, len(data)))
                data[position] ^= int(rng.integers(1, 256))
                path.write_bytes(bytes(data))
                self._cli_case(f"flip:{key}@{position}", folder, path, "either", "", clean_key=key)

    def dicom(self) -> None:
        if not SHARED.is_dir():
            return
        for label, action, index, expected in (
            *[("missing", "drop", i, "refuse") for i in (1, 5, 10, 15, 18)],
            *[("ends", "drop", i, "accept") for i in (0, 19)],
            *[("duplicate", "copy", i, "refuse") for i in (0, 9, 19)],
            *[("orientation", "rotate", i, "refuse") for i in (0, 10, 19)],
        ):
            folder = self.folder(f"dicom/{label}-{index}")
            series = bad_input_cases._dicom_copy(SHARED, folder)
            files = bad_input_cases._sorted_dicom(series)
            if action == "drop":
                files[index].unlink()
            elif action == "copy":
                shutil.copy(files[index], series / f"copy_{index}.dcm")
            else:
                bad_input_cases._edit_dicom(files[index], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
            self._cli_case(f"dicom:{label}@{index}", folder, series, expected, "")

    def batch(self) -> None:
        for row_id in ("truncated_nii_gz", "nan_nifti", "sheared_nrrd", "flipped", "oblique", "dicom_duplicate"):
            if row_id.startswith("dicom") and not SHARED.is_dir():
                continue
            folder = self.folder(f"batch/{row_id}")
            case = bad_input_cases.build(row_id, folder, self.model, SHARED)
            source = Path(case.argv[1])
            hashes = _sha(case.inputs)
            out = folder / "out"
            rc, stdout, err, seconds = _execute([*BATCH, "--input", str(source), "--output", str(out), "--model",
                                                 str(self.model), "--device", "cpu"], self.timeout * 2)
            refused = row_id not in ("flipped", "oblique")
            run = Run(f"batch:{row_id}", "batch", "refuse" if refused else "accept", seconds=seconds)

            def check(out=out, source=source):
                from GTVAutoSegLib.io import read_image

                segs = sorted(out.glob("*.seg.nrrd"))
                if len(segs) != 1:
                    return [f"wrong result: {len(segs)} segmentations"]
                return [] if read_image(segs[0]).same_grid(read_image(source), tol=1e-6) else [
                    "wrong result: the batch .seg.nrrd is off the input's grid"]

            _judge(run, rc, err, folder, hashes, "", None, check, refuse_codes=(1,))
            if refused and rc == 1 and (len(err.strip().splitlines()) != 1 or "ok," in stdout):
                run.problems.append(f"batch refusal not one line: {err.strip()[:200]}")
            self.record(run)

    def signals(self) -> None:
        source = SHARED / "openkbp" / "validation" / "pt_201" / "ct.nii.gz"
        if not source.is_file():
            return
        for signum, delay in ((signal.SIGTERM, 0.5), (signal.SIGTERM, 2.5), (signal.SIGTERM, 3.5),
                              (signal.SIGTERM, 4.5), (signal.SIGINT, 3.0), (signal.SIGINT, 4.0)):
            folder = self.folder(f"signal/{signum.name}-{delay}")
            path = folder / "pt_201" / "ct.nii.gz"
            path.parent.mkdir()
            shutil.copy(source, path)
            hashes = _sha([path])
            out = folder / "out"
            started = time.monotonic()
            proc = subprocess.Popen([*CLI, "segment", str(path), "-o", str(out), "--model", str(self.model),
                                     "--device", "cpu", "--png", "--progress", "none"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
            time.sleep(delay)
            proc.send_signal(signum)
            try:
                _, err = proc.communicate(timeout=self.timeout)
                rc = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                rc = None
            run = Run(f"signal:{signum.name}@{delay}s", "cli", "either", seconds=time.monotonic() - started)
            written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
            complete = ["pt_201.seg.nrrd", "pt_201_label.nii.gz", "pt_201_overview.png", "pt_201_report.json"]
            killed_starting = rc == -int(signum) and not err.strip() and written in ([], complete)
            if killed_starting:
                # killed by the signal's default action while Python was still starting (before the CLI
                # set its handlers) or already finishing (after main returned, its outputs all renamed):
                # nothing or everything was written, as for any program. Nothing: judged as an
                # interruption; everything: as the finished run it was.
                rc, err = (0, "") if written else (
                    128 + int(signum), "gtvautoseg: terminated" if signum == signal.SIGTERM else "gtvautoseg: interrupted")
            # an interruption is not a refusal: one line, "gtvautoseg: terminated" or "... interrupted"
            _judge(run, rc, err, folder, hashes, "", out, None, refuse_codes=(130, 143),
                   prefix=("gtvautoseg: terminated" if signum == signal.SIGTERM else "gtvautoseg: interrupted"))
            if killed_starting:
                run.rc, run.stderr_lines = -int(signum), 0
                run.first_error = f"(killed while starting or exiting, no message; outputs: {'all' if written else 'none'})"
            if written not in ([], complete):
                run.problems.append(f"half a set of outputs: {written}")
            if rc not in (0, 130, 143, None):
                run.problems.append(f"exit status {rc} after {signum.name}")
            self.record(run)

    def resources(self) -> None:
        """A full disk (file-size limit: writes fail with EFBIG), and permissions as a non-root user."""
        ct = phantom_ct()
        # RLIMIT_FSIZE caps each file: 2,000 bytes stops the first file; one byte under the largest
        # output of an unlimited run lets the smaller files through and stops the largest mid-write.
        folder = self.folder("full/unlimited")
        path = bad_input_cases._write(ct, folder / "pt_1" / "ct.nii.gz")
        _execute([*CLI, "segment", str(path), "-o", str(folder / "out"), "--model", str(self.model), "--device",
                  "cpu", "--png", "--progress", "none"], self.timeout)
        sizes = sorted(f.stat().st_size for f in (folder / "out").iterdir()) if (folder / "out").is_dir() else []
        limits = [2_000] + ([sizes[-1] - 1] if len(sizes) > 1 and sizes[0] < sizes[-1] - 1 else [])
        for limit in limits:
            folder = self.folder(f"full/{limit}")
            path = bad_input_cases._write(ct, folder / "pt_1" / "ct.nii.gz")
            hashes = _sha([path])

            def cap(limit=limit):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

            rc, _, err, seconds = _execute([*CLI, "segment", str(path), "-o", str(folder / "out"), "--model",
                                            str(self.model), "--device", "cpu", "--png", "--progress", "none"],
                                           self.timeout, preexec_fn=cap)
            run = Run(f"disk-full:{limit}B", "cli", "refuse", seconds=seconds)
            _judge(run, rc, err, folder, hashes, "full", folder / "out")
            self.record(run)
        setpriv = shutil.which("setpriv")
        if os.geteuid() != 0 or setpriv is None:
            return
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        for label in ("unwritable-output", "unreadable-input"):
            folder = self.folder(f"perm/{label}")
            os.chmod(folder.parent, 0o755)
            os.chmod(folder, 0o755)
            path = bad_input_cases._write(ct, folder / "pt_1" / "ct.nii.gz")
            os.chmod(path.parent, 0o755)
            out = folder / "locked"
            out.mkdir()
            if label == "unwritable-output":
                os.chmod(path, 0o644)
                os.chmod(out, 0o555)
                needle = "permission denied"
            else:
                os.chmod(path, 0o600)
                os.chmod(out, 0o777)
                needle = "permission denied"
            hashes = _sha([path])
            model_copy = folder / "model.pt"
            shutil.copy(self.model, model_copy)
            os.chmod(model_copy, 0o644)
            env = dict(os.environ, HOME=str(folder), MPLCONFIGDIR=str(folder / "mpl"))
            rc, _, err, seconds = _execute([*nobody, *CLI, "segment", str(path), "-o", str(out), "--model",
                                            str(model_copy), "--device", "cpu", "--progress", "none"],
                                           self.timeout, env=env)
            run = Run(f"nobody:{label}", "cli", "refuse", seconds=seconds)
            _judge(run, rc, err, folder, hashes, needle, out)
            self.record(run)

    def evaluate_and_many(self) -> None:
        from GTVAutoSegLib import io

        folder = self.folder("evaluate/fifo-ref")
        ct = phantom_ct()
        pred = folder / "pred.nii.gz"
        io.write_labelmap(ct.with_array((ct.array > 2000).astype(np.uint8)), pred)
        os.mkfifo(folder / "ref.nii.gz")
        hashes = _sha([pred])
        rc, _, err, seconds = _execute([*CLI, "evaluate", str(pred), str(folder / "ref.nii.gz")], self.timeout)
        run = Run("evaluate:fifo-ref", "cli", "refuse", seconds=seconds)
        _judge(run, rc, err, folder, hashes, "FIFO")
        self.record(run)

        folder = self.folder("evaluate/truncated-pred")
        io.write_labelmap(ct.with_array((ct.array > 2000).astype(np.uint8)), folder / "ref.nii.gz")
        data = (folder / "ref.nii.gz").read_bytes()
        (folder / "pred.nii.gz").write_bytes(data[: len(data) // 2])
        hashes = _sha([folder / "ref.nii.gz", folder / "pred.nii.gz"])
        rc, _, err, seconds = _execute([*CLI, "evaluate", str(folder / "pred.nii.gz"), str(folder / "ref.nii.gz"),
                                        "--csv", str(folder / "m.csv")], self.timeout)
        run = Run("evaluate:truncated-pred", "cli", "refuse", seconds=seconds)
        _judge(run, rc, err, folder, hashes, "truncated")
        if (folder / "m.csv").exists():
            run.problems.append("csv written for a refused input")
        self.record(run)

        folder = self.folder("many/one-bad")
        good = bad_input_cases._write(ct, folder / "in" / "good.nrrd")
        bad = folder / "in" / "bad.nii.gz"
        bad.write_bytes(b"\x1f\x8b not really gzip")
        hashes = _sha([good, bad])
        out = folder / "out"
        rc, _, err, seconds = _execute([*CLI, "segment", str(bad), str(good), "-o", str(out), "--model",
                                        str(self.model), "--device", "cpu", "--progress", "none"], self.timeout)
        run = Run("many:one-bad-one-good", "cli", "refuse", seconds=seconds)
        _judge(run, rc, err, folder, hashes, "bad.nii.gz")
        written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if written == ["good.seg.nrrd", "good_label.nii.gz", "good_report.json"]:
            run.problems = [p for p in run.problems if p != "output written for a refused input"]
        else:
            run.problems.append(f"the good input's outputs are {written}")
        self.record(run)

    def _cli_case(self, name: str, folder: Path, path: Path, expected: str, message: str,
                  clean_key: str | None = None) -> None:
        inputs = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        hashes = _sha(inputs)
        out = folder / "out"
        rc, _, err, seconds = _execute([*CLI, "segment", str(path), "-o", str(out), "--model", str(self.model),
                                        "--device", "cpu", "--progress", "none"], self.timeout)
        run = Run(name, "cli", expected, seconds=seconds)
        check = (lambda: _outputs_match(out, path, self.clean_masks, clean_key))
        _judge(run, rc, err, folder, hashes, message, out, check)
        self.record(run)


PARTS = ("table", "damaged_files", "dicom", "batch", "signals", "resources", "evaluate_and_many")


def summarise(runs: list[Run]) -> dict:
    def count(word):
        return sum(any(word in p for p in r.problems) for r in runs)

    return {
        "runs": len(runs),
        "refused_as_expected": sum(1 for r in runs if not r.problems and r.rc not in (0, None)),
        "accepted_on_grid": sum(1 for r in runs if not r.problems and r.rc == 0),
        "exit0_wrong_results": count("wrong result"),
        "tracebacks": count("traceback"),
        "hangs": count("hang"),
        "modified_inputs": count("modified input"),
        "stray_temporary_files": count("temporary files"),
        "other_problems": sum(1 for r in runs if r.problems and not any(
            w in p for p in r.problems for w in ("wrong result", "traceback", "hang", "modified", "temporary"))),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", action="store_true", help="print the README's table of refusals and exit")
    p.add_argument("--model", default=None, help="bundle to run (default: the shipped default model)")
    p.add_argument("--work", default=None, help="folder for the cases (default: a temporary one, removed)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    p.add_argument("--json", default=None, help="also write every run and the summary here")
    p.add_argument("--parts", default=None, help="comma-separated subset of: " + ", ".join(PARTS))
    args = p.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    from GTVAutoSegLib.bundle import resolve_model

    model = Path(args.model) if args.model else resolve_model(None)[0]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gtv-sweep-"))
    temp_before = {p.name for p in Path(tempfile.gettempdir()).glob("GTVAutoSeg-*")}
    sweep = Sweep(work, model, args.timeout)
    started = time.monotonic()
    try:
        sweep.clean_reference()
        chosen = args.parts.split(",") if args.parts else list(PARTS)
        unknown = sorted(set(chosen) - set(PARTS))
        if unknown:
            p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
        for part in PARTS:
            if part in chosen:
                getattr(sweep, part)()
    finally:
        summary = summarise(sweep.runs)
        stray = sorted({p.name for p in Path(tempfile.gettempdir()).glob("GTVAutoSeg-*")} - temp_before)
        summary["stray_batch_work_folders"] = len(stray)
        summary["minutes"] = round((time.monotonic() - started) / 60, 1)
        print(json.dumps(summary, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "runs": [asdict(r) for r in sweep.runs]}, indent=1))
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    bad = sum(v for k, v in summary.items() if k not in ("runs", "refused_as_expected", "accepted_on_grid", "minutes"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
