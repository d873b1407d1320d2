"""``gtvautoseg batch``: a cohort of CTs, serially here or on a Ray cluster (local or remote).

Each case goes through exactly the code of ``gtvautoseg segment`` (:func:`cli._cmd_segment`: the
same checks, output names and atomic writes), with the model loaded once per worker
(:class:`CaseWorker`); without Ray two cases are in flight, one read or written while the other
is segmented. With Ray, one actor per worker holds the model; a case whose worker dies is
retried on the restarted worker: the dead worker's temporary files are removed first and the
outputs only ever appear by rename, so a retry is safe and nothing partial is left. A case that
fails is a row in the summary CSV and the others go on.

Ray is an optional extra (``pip install gtvautoseg[ray]``); it is imported only for ``--ray``.

The segment command's pieces come in as ``command`` (the CLI passes :class:`cli.SegmentCommand`):
this module sits above the CLI's segment code, and the CLI's ``batch`` dispatches here, so taking
them as a parameter keeps the import graph one-way. Ray pickles the class by reference, so every
worker imports the same code.
"""

from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .errors import GTVError
from .filetypes import find_cases

SUMMARY_FIELDS = ("case", "input", "status", "outputs", "target", "volume_cc", "slices_segmented",
                  "slices_total", "seconds", "worker", "error")
# The ``segment`` flags a batch passes on to every case (the rest: input, -o, --name, --progress, are per case).
_FORWARDED = (("model", "--model"), ("device", "--device"), ("precision", "--precision"), ("engine", "--engine"),
              ("threshold", "--threshold"), ("keep_largest", "--keep-largest"))


def case_names(paths: list[Path], case_name) -> list[str]:
    """``case_name`` (the CLI's) of each path, refused when two give one name (one would overwrite the other)."""
    names, seen = [], {}
    for path in paths:
        name = case_name(path) if path.exists() else path.name.split(".")[0]
        other = seen.setdefault(name.casefold(), path)
        if other is not path:
            raise GTVError(f"inputs {other} and {path} both give the case name '{name}'; run them into "
                           "different -o folders")
        names.append(name)
    return names


def segment_flags(args) -> list[str]:
    """The ``segment`` command-line flags that every case of this batch gets."""
    from .outputs import OUTPUT_FORMATS

    flags = []
    for attr, flag in _FORWARDED:
        value = getattr(args, attr)
        if value is not None:
            flags += [flag, str(value)]
    flags += ["--format", ",".join(f for f in OUTPUT_FORMATS if f in args.format)]
    if args.no_classifier:
        flags.append("--no-classifier")
    if args.png:
        flags.append("--png")
    return flags


class CaseWorker:
    """Loads the model once; then segments, writes and reports one case per :meth:`run` call.

    Args:
        flags: ``segment`` flags (:func:`segment_flags`) shared by all cases.
        command: the segment command's pieces (``cli.SegmentCommand``).
        keep_error: a model that cannot be loaded is kept as :attr:`error` instead of raised (a Ray
            actor whose creation raises is restarted in vain; the driver asks :meth:`ready` instead).
    """

    def __init__(self, flags: list[str], command, keep_error: bool = False):
        self.flags = list(flags)
        self.command = command
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.error: str | None = None
        self._compute = threading.Lock()  # one case at a time in the networks, see run_serial
        args = command.build_parser().parse_args(["segment", "-", "-o", ".", "--progress", "none", *self.flags])
        try:
            self.segmenter = command.open_segmenter(args)
        except GTVError as exc:
            if not keep_error:
                raise
            self.error = str(exc)

    def ready(self) -> str | None:
        """None when the model is loaded, else why not."""
        return self.error

    def run(self, path: str, name: str, outdir: str) -> dict:
        """One case -> its summary row; never raises for the case's own problems. Safe to call from
        several threads: the segmentation itself (preprocessing, networks, inverse) runs for one
        case at a time, reading and writing overlap with it."""
        from . import io
        from .outputs import remove_temporaries

        command = self.command
        row = {"case": name, "input": str(path), "worker": self.worker}
        t0 = time.perf_counter()
        args = command.build_parser().parse_args(["segment", str(path), "-o", str(outdir), "--name", name,
                                          "--progress", "none", *self.flags])
        targets = command.case_outputs(Path(outdir), name, args.format, args.png)
        try:
            # A worker that died in this case (this is then a retry) left its temporary files behind.
            for target in targets.values():
                remove_temporaries(target)
            # quiet: the one-line case summary is the CSV's row
            command.segment(args, segmenter=_OneAtATime(self.segmenter, self._compute), read_image=io.read_image,
                            quiet=True)
            report = json.loads(targets["report"].read_text())
            row.update(status="ok", outputs=" ".join(sorted(report["outputs"].values())),
                       target=report["model"]["target"], volume_cc=report["volume_cc"],
                       slices_segmented=report["slices_segmented"], slices_total=report["slices_total"])
        except GTVError as exc:
            row.update(status="failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001  (an unexpected error fails this case, not the batch)
            row.update(status="failed", error=f"{type(exc).__name__}: {str(exc).strip()[:300]}")
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row


class _OneAtATime:
    """A segmenter whose calls take a lock (its other attributes as they are)."""

    def __init__(self, segmenter, lock: threading.Lock):
        self._segmenter, self._lock = segmenter, lock

    def __getattr__(self, name):
        return getattr(self._segmenter, name)

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._segmenter(*args, **kwargs)


class _CaseProgress:
    """A tqdm bar over cases (humans), parseable lines, or nothing."""

    def __init__(self, mode: str, total: int):
        self.mode, self.total, self.done, self.bar = mode, total, 0, None
        if mode == "bar" and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="cases", unit="case", file=sys.stderr)

    def __call__(self, row: dict) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if row["status"] != "ok":
                self.bar.write(f"gtvautoseg: error: {row['input']}: {row.get('error', '')}", file=sys.stderr)
        elif self.mode == "lines":
            print(f"PROGRESS {100.0 * self.done / max(self.total, 1):.1f} {row['case']} {row['status']}", flush=True)
        elif row["status"] != "ok":
            print(f"gtvautoseg: error: {row['input']}: {row.get('error', '')}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_serial(cases: list[Path], names: list[str], outdir: Path, flags: list[str], progress, command) -> list[dict]:
    """All cases in this process with one model: two cases in flight, so that one is read or written
    while the other is segmented (the segmentations themselves run one at a time, with all cores)."""
    from concurrent.futures import ThreadPoolExecutor

    worker = CaseWorker(flags, command)
    rows = []
    pool = ThreadPoolExecutor(2, thread_name_prefix="batch-case")
    try:
        futures = [pool.submit(worker.run, str(path), name, str(outdir)) for path, name in zip(cases, names)]
        for future in futures:
            rows.append(future.result())
            progress(rows[-1])
    finally:  # Ctrl+C: the cases in flight finish (their files all or none), the rest never start
        pool.shutdown(wait=True, cancel_futures=True)
    return rows


def run_ray(cases: list[Path], names: list[str], outdir: Path, flags: list[str], progress, command,
            address: str | None, workers: int | None, cpus_per_worker: float, retries: int) -> list[dict]:
    """The cases over a pool of Ray actors, each holding the model; ``address`` None starts a local
    Ray on this machine, else it is a running cluster's (``auto``, ``HOST:6379`` or ``ray://HOST:10001``).

    A worker process that dies is restarted and its case retried up to ``retries`` times; after
    that the case is reported failed and a fresh worker takes the remaining cases.
    """
    try:
        import ray
    except ImportError:
        raise GTVError("--ray needs Ray: pip install 'gtvautoseg[ray]' (or pip install ray)") from None
    from ray.exceptions import RayError

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=int(max(1, workers or 0) * cpus_per_worker) if workers else None,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_worker))
        workers = max(1, min(workers, len(cases)))
        Actor = ray.remote(num_cpus=cpus_per_worker, max_restarts=retries, max_task_retries=retries)(CaseWorker)
        pool = [Actor.remote(flags, command, keep_error=True) for _ in range(workers)]
        problem = next((e for e in ray.get([a.ready.remote() for a in pool]) if e), None)
        if problem:
            raise GTVError(problem)
        todo = list(range(len(cases)))[::-1]
        pending: dict = {}
        rows: list[dict | None] = [None] * len(cases)

        def submit(actor) -> None:
            if todo:
                i = todo.pop()
                pending[actor.run.remote(str(cases[i]), names[i], str(outdir))] = (actor, i)

        for actor in pool:
            submit(actor)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, i = pending.pop(ref)
            try:
                row = ray.get(ref)
            except RayError as exc:  # the worker died more often than it may be restarted
                row = {"case": names[i], "input": str(cases[i]), "status": "failed",
                       "error": f"worker lost ({type(exc).__name__}) after {retries} retries"}
                with contextlib.suppress(Exception):
                    ray.kill(actor)
                actor = Actor.remote(flags, command, keep_error=True)
            rows[i] = row
            progress(row)
            submit(actor)
        return rows
    finally:
        if started_here:
            ray.shutdown()


def write_summary(rows: list[dict], path: Path) -> None:
    """One row per case, written atomically."""
    from .outputs import atomic_output

    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")


def cmd_batch(args, command) -> int:
    """``gtvautoseg batch``: exit 0 when every case was segmented, 2 when some failed.

    Args:
        command: the segment command's pieces (``cli.SegmentCommand``).
    """
    from .outputs import prepare_output_dir

    for flag, value, least in (("--workers", args.workers, 1), ("--retries", args.retries, 0),
                               ("--cpus-per-worker", args.cpus_per_worker, 0.01)):
        if value is not None and not value >= least:
            raise GTVError(f"{flag} must be at least {least:g}, got {value}")
    if args.ray not in (None, "local") and Path(args.ray).exists():  # --ray took the first input as its ADDRESS
        raise GTVError(f"--ray {args.ray}: that is a path, not a Ray address; put --ray after the inputs or "
                       "write --ray=ADDRESS")
    cases = find_cases(args.input)
    if not cases:
        raise GTVError("no CT found in the inputs")
    names = case_names(cases, command.case_name)
    outdir = prepare_output_dir(args.output)
    flags = segment_flags(args)
    progress = _CaseProgress(args.progress, len(cases))
    try:
        if args.ray is None:
            rows = run_serial(cases, names, outdir, flags, progress, command)
        else:
            rows = run_ray(cases, names, outdir, flags, progress, command,
                           address=None if args.ray == "local" else args.ray,
                           workers=args.workers, cpus_per_worker=args.cpus_per_worker, retries=args.retries)
    finally:
        progress.close()
    write_summary(rows, outdir / args.summary)
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} cases segmented -> {outdir}; summary {outdir / args.summary}", flush=True)
    return 2 if failed else 0
