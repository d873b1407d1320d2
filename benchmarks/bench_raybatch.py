"""Cohort throughput of ``gtvautoseg batch``: serial vs a local Ray with 1 and 2 workers, one run
(not a test; prints Markdown).

Every arm segments the same CTs into its own folder with the default model (or ``--model``); the
wall time counts from the first case submitted to the last one written, model loading included,
Ray's own start-up reported apart. Other processes' CPU use is logged per arm (the machine is
shared). Outputs of all arms are checked byte for byte against the serial arm.

    python benchmarks/bench_raybatch.py ../shared/data/openkbp/validation --cases 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_floor import CpuWatch  # noqa: E402

from GTVAutoSegLib.cli import SegmentCommand, build_parser  # noqa: E402
from GTVAutoSegLib.raybatch import case_names, find_cases, run_ray, run_serial, segment_flags  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inputs", nargs="+", help="CT files or folders, as for gtvautoseg batch")
    p.add_argument("--cases", type=int, default=8, help="first N cases found")
    p.add_argument("--model", default=None)
    p.add_argument("--rounds", type=int, default=2, help="rounds over all arms, every other one reversed")
    args = p.parse_args()

    cases = find_cases(args.inputs)[: args.cases]
    names = case_names(cases, SegmentCommand.case_name)
    flags = segment_flags(build_parser().parse_args(["batch", "x", "-o", "x", "--device", "cpu",
                                                     *(["--model", args.model] if args.model else [])]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = {}

        def arm(label, run, round_):
            out[label] = Path(tmp) / f"{label.replace(' ', '_')}_{round_}"
            out[label].mkdir()
            with CpuWatch() as w:
                t = time.perf_counter()
                result = run(out[label])
                wall = time.perf_counter() - t
            ok = sum(r["status"] == "ok" for r in result)
            rows.append((label, wall, ok, w.others))

        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        def serial_on(threads):
            def run(o):
                # torch's threads, and ONNX Runtime's (its sessions read OMP_NUM_THREADS when made)
                before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
                torch.set_num_threads(threads)
                os.environ["OMP_NUM_THREADS"] = str(threads)
                try:
                    return run_serial(cases, names, o, flags, lambda row: None, SegmentCommand)
                finally:
                    torch.set_num_threads(before)
                    os.environ.pop("OMP_NUM_THREADS") if env is None else os.environ.update(OMP_NUM_THREADS=env)
            return run

        # Ray gives each 1-CPU worker 1 thread (OMP_NUM_THREADS=1); serial runs on both cores, or on one.
        arms = [("serial (2 threads)", serial_on(2)), ("serial (1 thread)", serial_on(1))]
        for workers in (1, 2):
            arms.append((f"ray {workers} worker{'s' if workers > 1 else ''}",
                         lambda o, w=workers: run_ray(cases, names, o, flags, lambda row: None, SegmentCommand, address=None,
                                                      workers=w, cpus_per_worker=1, retries=2)))
        try:
            for r in range(args.rounds):  # A B C, C B A, ...: drift of the machine's load hits all arms
                for label, run in (arms if r % 2 == 0 else arms[::-1]):
                    arm(f"{label}", run, r)
        finally:
            ray.shutdown()
        reference = out["serial (2 threads)"]
        for label, folder in out.items():
            for f in sorted(reference.iterdir()):
                if f.name.endswith((".seg.nrrd", ".nii.gz")):
                    assert (folder / f.name).read_bytes() == f.read_bytes(), (label, f.name)

    print(f"{len(cases)} CTs ({cases[0].parent}), {os.cpu_count()} cores; local Ray start-up {ray_start:.1f} s "
          "(not in the times below); outputs byte-identical across arms")
    print()
    print("| arm | round | wall | cases/min | vs serial (same round) | other processes' CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for i, (label, wall, ok, others) in enumerate(rows):
        round_ = i // len(arms)
        serial = next(w for j, (lab, w, _, _) in enumerate(rows)
                      if j // len(arms) == round_ and lab == "serial (2 threads)")
        print(f"| {label} | {round_ + 1} | {wall:.1f} s | {60 * ok / wall:.1f} | {serial / wall:.2f}x | {others:.0%} |")


if __name__ == "__main__":
    main()
