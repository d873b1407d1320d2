"""Build and check slice-table packs from the command line (the pack format is :mod:`training.tablestore`).

    python -m training.tablepack build --config training/configs/sanet_cr.json --size 96 --out carry/openkbp96
    python -m training.tablepack check carry/openkbp96
    python -m training.train --config training/configs/sanet_cr.json --size 96 --set data.pack=carry/openkbp96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from GTVAutoSegLib.errors import GTVError

from .config import load_config
from .data import build_slice_table, resolve_cache, split_cases
from .provenance import ROOT, git_commit
from .tablestore import SIDES, check_pack, write_pack


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tablepack", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="prepare a config's training and validation tables and pack them")
    b.add_argument("--config", help="training config JSON (its data and preprocess sections are used)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    b.add_argument("--size", type=int, help="model-space side (preprocess.size)")
    b.add_argument("--out", required=True, help="pack folder to create")
    b.add_argument("--part-mib", type=float, default=14.0, help="largest part in MiB (default 14)")
    c = sub.add_parser("check", help="verify every part of a pack folder")
    c.add_argument("folder")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            for side in SIDES:
                m = check_pack(Path(args.folder) / side)
                shape = next(a["shape"] for a in m["arrays"] if a["name"] == "images")
                print(f"{side}: {len(m['patients'])} patients, {shape[0]} slices of {shape[1]} x {shape[2]}, "
                      f"{len(m['parts'])} parts, {sum(q['bytes'] for q in m['parts']) / 2**20:.1f} MiB: ok")
            return 0

        sets = list(args.set) + ([f"preprocess.size={args.size}"] if args.size else [])
        cfg = load_config(args.config, sets)
        out = Path(args.out)
        if out.exists():
            raise GTVError(f"{out} already exists; remove it or choose another --out")
        cases = dict(zip(SIDES, split_cases(cfg.data, ROOT)))
        cache = resolve_cache(cfg.data, ROOT)
        provenance = {"data": {k: getattr(cfg.data, k) for k in ("layout", "root", "target", "split", "train_split",
                                                                 "val_split", "folds", "fold", "seed")},
                      "commit": git_commit()}
        for side in SIDES:
            table = build_slice_table(cases[side], cfg.preprocess, cache, progress=True)
            write_pack(table, cfg.preprocess, out / side, args.part_mib, provenance)
            print(f"{side}: {len(table.patients)} patients, {len(table)} slices -> {out / side} "
                  f"({_folder_bytes(out / side) / 2**20:.1f} MiB)", flush=True)
    except GTVError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
