"""Training throughput in slices per second: a bare train step vs the real data path.

    python benchmarks/bench_throughput.py                       # both networks at 512 and 128
    python benchmarks/bench_throughput.py --sizes 128 --batch 8 --steps 5 --device cpu

"bare": one fixed batch already on the device, forward + loss + backward + AdamW step.
"pipeline": what ``train.py`` does per step: gather a batch from a slice table (preloaded to the GPU
on CUDA), augment it on the device, then the same step. Both use channels_last, and each precision
asked for (``--precisions fp32,bf16``; bf16 is autocast with fp32 weights, on the CPU too). The issue's floor: a bare SANet step at batch 32, 512 x 512, bf16, channels_last on
an H100 = 684 slices/s; the goal is >= 0.9x that with the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from GTVAutoSegLib.device import DEVICE_HELP, resolve_device  # noqa: E402
from GTVAutoSegLib.losses import build_loss  # noqa: E402
from GTVAutoSegLib.models import NetConfig, build_network, network_kind  # noqa: E402
from training.augment import AugmentConfig, augment_batch  # noqa: E402
from training.engine import (SliceSource, StepLoss, autocast_for, epoch_rows, memory_format_for,  # noqa: E402
                             sync, train_step)
from training.tablestore import SliceTable  # noqa: E402


def synthetic_table(n: int, size: int, seed: int = 0) -> SliceTable:
    """Random slices with a disc of "tumour" on a third of them (content does not change the cost)."""
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size), dtype=np.float32).astype(np.float16)
    masks = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, n, 3):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 10) ** 2
    return SliceTable.concatenate([("synthetic", images, masks, (1.0, 1.0, 1.0))])


def bench(name: str, size: int, batch: int, steps: int, warmup: int, device: torch.device, precision: str,
          pipeline: bool, table_slices: int) -> float:
    """Slices per second over ``steps`` timed steps after ``warmup``; ``precision`` fp32 or bf16."""
    torch.manual_seed(0)
    kind = network_kind(name)
    fmt = memory_format_for(kind)
    net = build_network(NetConfig(name)).to(device, memory_format=fmt).train()
    loss_fn = StepLoss(kind, build_loss("cr") if kind == "segmenter" else None).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    autocast = autocast_for(device, precision)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    if pipeline:
        table = synthetic_table(table_slices, size)
        source = SliceSource(table, device, preload=True)
        rows = epoch_rows(table.tumour, "original", 0, 1, None)
        aug = AugmentConfig()

        def next_batch(i):
            start = (i * batch) % max(1, rows.size - batch)
            x, y, flag = source.batch(rows[start:start + batch], fmt)
            x, y_aug = augment_batch(x, y if kind == "segmenter" else None, aug, gen)
            return x, (y_aug if y_aug is not None else y), flag
    else:
        x0 = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=fmt)
        y0 = (torch.rand(batch, size, size, device=device) > 0.9).long()
        f0 = (torch.rand(batch, device=device) > 0.5).long()

        def next_batch(i):
            return x0, y0, f0

    for i in range(warmup):
        train_step(net, loss_fn, opt, *next_batch(i), autocast)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        train_step(net, loss_fn, opt, *next_batch(warmup + i), autocast)
    sync(device)
    return batch * steps / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_throughput.py", description=__doc__.splitlines()[0])
    p.add_argument("--networks", default="resnet18_classifier,sanet")
    p.add_argument("--sizes", default="512,128")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--table-slices", type=int, default=512, help="slices in the synthetic table (pipeline)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    precisions = [q.strip() for q in args.precisions.split(",") if q.strip()]
    results = []
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"batch {args.batch}, channels_last")
    print("| network | size | precision | bare slices/s | pipeline slices/s | pipeline / bare |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name in [n.strip() for n in args.networks.split(",") if n.strip()]:
        for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
            for precision in precisions:
                bare = bench(name, size, args.batch, args.steps, args.warmup, device, precision, False,
                             args.table_slices)
                pipe = bench(name, size, args.batch, args.steps, args.warmup, device, precision, True,
                             args.table_slices)
                results.append({"network": name, "size": size, "batch": args.batch, "precision": precision,
                                "bare": bare, "pipeline": pipe, "device": str(device),
                                "threads": torch.get_num_threads()})
                print(f"| {name} | {size} | {precision} | {bare:.1f} | {pipe:.1f} | {pipe / bare:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
