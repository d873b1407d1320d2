"""DistributedDataParallel training: 2 gloo processes through torchrun end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import hashlib, json, os, sys
    import numpy as np, torch
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    from GTVAutoSegLib.phantom import make_phantom
    from GTVAutoSegLib.preprocessing import PreprocessSpec
    from training import distributed as D
    from training.config import load_config
    from training.data import SliceTable, prepare_case
    from training.engine import epoch_rows
    from training.train import Trainer

    out = sys.argv[1]
    spec = PreprocessSpec(size=64)
    def table(n, seed):
        return SliceTable.concatenate([
            (f"ph{seed + k}", *prepare_case(*make_phantom(shape=(8, 64, 64), spacing=(1.0, 1.0, 2.5), seed=seed + k,
                                                          contrast_hu=150.0, tumour_slices=4), spec))
            for k in range(n)])

    def digest(net):
        h = hashlib.sha256()
        for k, v in sorted(net.state_dict().items()):
            h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    cfg = load_config(None, ['network={"name": "resnet18_classifier"}', 'loss={"name": "ce"}', 'balance="original"',
                             'preprocess={"size": 64}', "batch_size=4", "max_epochs=1", 'device="cpu"',
                             f'out_dir="{out}/run"', "seed=0"])
    world = D.init_world("cpu")
    trainer = Trainer(cfg, table(3, 0), table(1, 50), world)
    initial = digest(trainer.net)
    rows = D.shard(epoch_rows(trainer.train_table.tumour, cfg.balance, cfg.seed, 1, None), world)
    trainer.fit()
    with open(f"{out}/rank{world.rank}.json", "w") as f:
        json.dump({"world": world.size, "initial": initial, "final": digest(trainer.net),
                   "rows": rows.tolist(), "steps": trainer.history[-1]["steps"] if trainer.history else None}, f)
    D.shutdown(world)
""")


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
         str(script), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] == ranks[1]["final"]  # gradients averaged, buffers synced
    assert ranks[0]["final"] != ranks[0]["initial"]  # and it did train
    assert not set(ranks[0]["rows"]) & set(ranks[1]["rows"])  # each rank had its own share of the epoch
    assert len(ranks[0]["rows"]) == len(ranks[1]["rows"]) == 12  # 24 slices split in two
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "log.csv").is_file()
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 2 and log[1].split(",")[2] == "24"  # the log counts the slices of both ranks
