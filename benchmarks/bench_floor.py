"""End to end against the floor, in one run (not a test; prints Markdown).

- floor: the bare forward passes of the model's networks on exactly the inputs one end-to-end run
  gave them (recorded with forward hooks, replayed alone), fp32 and with bf16 autocast on the CPU;
- end to end, model loaded: read -> segment -> write ``.seg.nrrd``; the ratio end to end / floor;
  the read alone within it (``io.read_ct``: the file's checks and voxels) and its ratio to the floor;
- cold: a whole ``gtvautoseg segment`` command in a fresh interpreter (imports, model load, the
  case), and the imports alone; with ``--baseline DIR`` also for another source tree (e.g. ``git
  archive main``), interleaved run by run so both see the same machine load;
- ``--engine onnx``: the networks on ONNX Runtime (``--engine`` of the CLI; the export from the
  user cache, made first if missing): the floor is then the bare ``session.run`` calls on the
  recorded inputs (no bf16 column), and the cold calls are timed for both engines, interleaved;
- other processes' CPU use over each measurement (``/proc/stat`` minus this process and its
  children): this machine is shared, so read every number beside it.

    python benchmarks/bench_floor.py --ct ../shared/data/lung_pyradiomics/lung2_image.nrrd --phantom 150
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

# What the CLI does before numpy or torch load (``device.passive_cpu_threads``): idle OpenMP and
# OpenBLAS threads sleep, so the end-to-end times here are those of ``gtvautoseg segment``/``batch``.
from GTVAutoSegLib.device import passive_cpu_threads  # noqa: E402

passive_cpu_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import machine_name, select_slices  # noqa: E402

from GTVAutoSegLib import io  # noqa: E402
from GTVAutoSegLib.segfile import write_seg_nrrd  # noqa: E402
from GTVAutoSegLib.bundle import open_model  # noqa: E402
from GTVAutoSegLib.image import sitk  # noqa: E402
from GTVAutoSegLib.phantom import make_phantom  # noqa: E402
from GTVAutoSegLib.pipeline import Segmenter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class CpuWatch:
    """Share of all cores that other processes used between start and stop (0..1).

    This process's descendants are sampled every 0.2 s, so the CPU time of one that exits in
    between (a Ray worker ended with its batch, never reaped by us) still counts as ours.
    """

    def __enter__(self):
        self.seen: dict[int, float] = {}
        self.first = _descendants()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.t, self.busy, self.own = time.perf_counter(), _busy_s(), _own_s()
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.2):
            self.seen.update(_descendants())

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        busy, own = _busy_s(), _own_s()
        self.stop.set()
        self.thread.join()
        self.seen.update(_descendants())
        kids = sum(v - self.first.get(pid, 0.0) for pid, v in self.seen.items())
        others = (busy - self.busy) - (own - self.own) - kids
        self.others = max(0.0, others / (wall * os.cpu_count()))
        return False


def _busy_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    """CPU seconds of this process (its reaped children are the subprocess runs of the cold arm)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _descendants() -> dict[int, float]:
    """CPU seconds of each live descendant of this process (a local Ray's raylet and workers are the
    driver's descendants)."""
    parent, cpu = {}, {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(d.name)] = int(fields[1])
            cpu[int(d.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    me, mine = os.getpid(), set()
    for pid in parent:
        chain, q = [], pid
        while q > 1 and q not in mine and q != me:
            chain.append(q)
            q = parent.get(q, 0)
        if q == me or q in mine:
            mine.update(chain)
    return {pid: cpu[pid] for pid in mine}


def record_inputs(seg: Segmenter) -> tuple[list, list]:
    """Forward hooks on the cascade's networks: every input they get is kept, with its network."""
    calls, handles = [], []
    for name in ("locator", "classifier", "segmenter"):
        net = getattr(getattr(seg.cascade, name, None), "net", None)  # the torch module of a torchnets.TorchNet
        if net is not None:
            handles.append(net.register_forward_pre_hook(
                lambda mod, args, name=name: calls.append((name, mod, args[0].detach().clone(
                    memory_format=torch.preserve_format)))))
    return calls, handles


def record_onnx_inputs(seg: Segmenter) -> tuple[list, list]:
    """The same for ONNX Runtime nets (``onnxnets.OrtNet``): each ``probabilities`` input is kept
    with a callable that runs the bare session on it."""
    calls, restore = [], []
    for name in ("locator", "classifier", "segmenter"):
        net = getattr(seg.cascade, name, None)
        if net is None:
            continue
        original = net.probabilities

        def spy(x, net=net, name=name, original=original):
            calls.append((name, lambda inp, net=net: net.session.run([net.output], {net.input: inp}), x.copy()))
            return original(x)

        net.probabilities = spy
        restore.append(SimpleNamespace(remove=lambda net=net: delattr(net, "probabilities")))  # like a hook handle
    return calls, restore


def replay(calls: list, bf16: bool, repeats: int) -> tuple[float, dict[str, float]]:
    """Median seconds of all recorded forward passes, replayed alone; per network too."""
    runs = []
    for rep in range(repeats + 1):
        per: dict[str, float] = {}
        with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()):
            for name, net, x in calls:
                t = time.perf_counter()
                net(x)
                per[name] = per.get(name, 0.0) + time.perf_counter() - t
        if rep:
            runs.append(per)
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]} if runs and runs[0] else {}
    return sum(med.values()), med


def end_to_end(seg: Segmenter, src: Path, out: Path, selection, repeats: int) -> tuple[float, float]:
    """Median seconds of read -> segment -> write, and of the read within it."""
    times, reads = [], []
    for rep in range(repeats + 1):
        t0 = time.perf_counter()
        ct = io.read_ct(src)
        t1 = time.perf_counter()
        with torch.inference_mode():
            result = seg(ct, selection=selection)
        write_seg_nrrd(result.mask, out)
        if rep:
            times.append(time.perf_counter() - t0)
            reads.append(t1 - t0)
    return float(np.median(times)), float(np.median(reads))


def cold(src: Path, out: Path, tree: Path | None, repeats: int, model: str | None,
         engine: str | None = None) -> dict[str, list[float]]:
    """Wall seconds of ``gtvautoseg segment`` and of its imports alone (with the model loaded), in
    fresh interpreters; ``engine``: the CLI's ``--engine`` (None: a tree that has no such flag)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cwd = str(tree or ROOT)
    seg = [sys.executable, "-m", "GTVAutoSegLib.cli", "segment", str(src), "-o", str(out), "--device", "cpu",
           "--progress", "none", *(["--model", model] if model else []), *(["--engine", engine] if engine else [])]
    if engine == "onnx":
        imports = [sys.executable, "-c", "import GTVAutoSegLib.cli, GTVAutoSegLib.pipeline, GTVAutoSegLib.io, "
                   "GTVAutoSegLib.report, GTVAutoSegLib.dicomrt; from GTVAutoSegLib.bundle import resolve_model; "
                   f"from GTVAutoSegLib.onnxnets import open_onnx; p, s, _ = resolve_model({model!r}); open_onnx(p, s)"]
    else:
        imports = [sys.executable, "-c", "import GTVAutoSegLib.cli, GTVAutoSegLib.pipeline, GTVAutoSegLib.io, "
                   "GTVAutoSegLib.bundle, GTVAutoSegLib.report, GTVAutoSegLib.metrics, GTVAutoSegLib.dicomrt; "
                   "from GTVAutoSegLib.models import build_network; from GTVAutoSegLib.bundle import open_model; "
                   f"b = open_model({model!r}); b.build_networks(); b.build_locator()"]
    found = {"command": [], "imports + model": [], "others": []}
    for _ in range(repeats):
        with CpuWatch() as w:
            t = time.perf_counter()
            subprocess.run(seg, cwd=cwd, env=env, check=True, capture_output=True)
            found["command"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(imports, cwd=cwd, env=env, check=True, capture_output=True)
            found["imports + model"].append(time.perf_counter() - t)
        found["others"].append(w.others)
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ct", action="append", default=[], help="a CT file (repeatable)")
    p.add_argument("--phantom", type=int, default=150, help="also a phantom CT of this many 512 x 512 slices (0: none)")
    p.add_argument("--tumour-slices", type=int, default=30, help="slices the segmenter gets on the phantom")
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold-repeats", type=int, default=3)
    p.add_argument("--baseline", type=Path, default=None, help="another source tree to time cold calls against")
    p.add_argument("--baseline-engine", default=None, choices=["torch", "onnx"],
                   help="--engine for the baseline's cold calls (a tree that has the flag)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: torch's, the cores)")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"],
                   help="what runs the networks end to end; onnx also times cold calls of both engines")
    args = p.parse_args()
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.engine == "onnx":
        from GTVAutoSegLib.bundle import resolve_model
        from GTVAutoSegLib.onnxnets import open_onnx

        nets = open_onnx(*resolve_model(args.model)[:2])
        seg = Segmenter(nets.bundle, device="cpu", nets=nets)
    else:
        seg = Segmenter(open_model(args.model), device="cpu")
    print(f"machine: {machine_name(torch.device('cpu'))}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"engine {args.engine}; model {seg.bundle.name} {seg.bundle.version}; medians of {args.repeats} after a warm-up")
    print()
    print("| CT | end to end | of which reading | floor fp32 | floor bf16 | end to end / floor fp32 | "
          "reading / floor fp32 | bf16 / fp32 floor | networks (fp32) | other processes' CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(Path(c).name, Path(c), None) for c in args.ct]
        if args.phantom:
            ct, _ = make_phantom(shape=(args.phantom, 512, 512), spacing=(0.98, 0.98, 2.5), seed=0,
                                 tumour_slices=args.tumour_slices)
            src = Path(tmp) / "phantom.nii.gz"
            sitk.WriteImage(ct.to_sitk(), str(src))
            cases.append((f"phantom {args.phantom} x 512 x 512 ({args.tumour_slices} slices segmented)", src,
                          select_slices(ct, args.tumour_slices)))
        for label, src, selection in cases:
            with CpuWatch() as w:
                calls, handles = (record_onnx_inputs if args.engine == "onnx" else record_inputs)(seg)
                with torch.inference_mode():
                    seg(io.read_ct(src), selection=selection)
                for h in handles:
                    h.remove()
                e2e, read = end_to_end(seg, src, Path(tmp) / "out.seg.nrrd", selection, args.repeats)
                floor, per = replay(calls, False, args.repeats)
                floor_bf16 = replay(calls, True, args.repeats)[0] if args.engine == "torch" else float("nan")
            nets = ", ".join(f"{k} {v:.3f} s" for k, v in per.items())
            print(f"| {label} | {e2e:.3f} s | {read:.3f} s | {floor:.3f} s | {floor_bf16:.3f} s | {e2e / floor:.2f} | "
                  f"{read / floor:.2f} | {floor_bf16 / floor:.2f} | {nets} | {w.others:.0%} |")

        if args.ct and args.cold_repeats:
            src = Path(args.ct[0])
            engines = ["torch", "onnx"] if args.engine == "onnx" else [None]
            trees = [(f"this tree{f', --engine {e}' if e else ''}", None, e) for e in engines]
            if args.baseline:  # a baseline with --engine (482e92a and later) on the engine timed here
                trees.append(("baseline" + (f", --engine {args.baseline_engine}" if args.baseline_engine else ""),
                              args.baseline.resolve(), args.baseline_engine))
            results = {name: {"command": [], "imports + model": [], "others": []} for name, _, _ in trees}
            for _ in range(args.cold_repeats):  # interleaved: every arm sees the same load
                for name, tree, engine in trees:
                    for k, v in cold(src, Path(tmp) / f"cold-{name}", tree, 1, args.model, engine).items():
                        results[name][k] += v
            print()
            print(f"Cold `gtvautoseg segment {src.name}` (fresh interpreter; median of {args.cold_repeats}, interleaved):")
            print()
            print("| tree | whole command | imports + model load | case (the rest) | other processes' CPU (max) |")
            print("|---|---:|---:|---:|---:|")
            for name, _, _ in trees:
                r = results[name]
                cmd, imp = float(np.median(r["command"])), float(np.median(r["imports + model"]))
                print(f"| {name} | {cmd:.2f} s | {imp:.2f} s | {cmd - imp:.2f} s | {max(r['others']):.0%} |")


if __name__ == "__main__":
    main()
