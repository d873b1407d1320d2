"""training/tablestore.py + tablepack.py: slice tables packed into checksummed parts, and training from a pack on a
machine without SimpleITK (as on the borrowed GPU machines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.preprocessing import PreprocessSpec
from training import tablepack, tablestore
from training.data import SliceTable, prepare_case

ROOT = Path(__file__).resolve().parents[1]
SPEC = PreprocessSpec(size=64)
ARRAYS = ("images", "masks", "patient", "slice_index", "tumour")


def table(n: int, seed: int) -> SliceTable:
    parts = []
    for k in range(n):
        ct, mask = make_phantom(shape=(10, 64, 64), spacing=(1.0, 1.0, 2.5), seed=seed + k, contrast_hu=150.0,
                                tumour_slices=4)
        parts.append((f"ph{seed + k}", *prepare_case(ct, mask, SPEC)))
    return SliceTable.concatenate(parts)


def test_pack_round_trip_is_lossless_over_many_parts(tmp_path):
    t = table(3, 0)
    manifest = tablestore.write_pack(t, SPEC, tmp_path / "p", part_mib=0.004, provenance={"note": "test"})
    assert len(manifest["parts"]) >= 3
    assert all(p["bytes"] <= 0.004 * 2**20 for p in manifest["parts"])
    back = tablestore.read_pack(tmp_path / "p", SPEC)
    for name in ARRAYS:
        a, b = getattr(t, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.patients == t.patients and back.spacing == t.spacing
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary folder left beside it


def test_incomplete_damaged_or_foreign_packs_are_refused(tmp_path):
    t = table(2, 10)
    folder = tmp_path / "p"
    tablestore.write_pack(t, SPEC, folder, part_mib=0.004)
    with pytest.raises(GTVError, match="already exists"):
        tablestore.write_pack(t, SPEC, folder)
    with pytest.raises(GTVError, match="prepared with"):
        tablestore.read_pack(folder, PreprocessSpec(size=96))

    parts = sorted(folder.glob("part-*.xz"))
    blob = bytearray(parts[1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    parts[1].write_bytes(bytes(blob))
    parts[2].rename(tmp_path / "elsewhere.xz")
    with pytest.raises(GTVError, match=rf"missing {parts[2].name}; damaged {parts[1].name}"):
        tablestore.read_pack(folder, SPEC)
    with pytest.raises(GTVError, match="not a slice-table pack"):
        tablestore.read_pack(tmp_path, SPEC)


def test_cli_build_then_train_from_the_pack_without_simpleitk(tmp_path):
    root = tmp_path / "raw"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for k in range(5):
        ct, mask = make_phantom(shape=(10, 64, 64), spacing=(1.0, 1.0, 2.5), seed=k, contrast_hu=150.0, tumour_slices=4)
        sitk.WriteImage(ct.to_sitk(), str(root / "imagesTr" / f"ph{k}_0000.nii.gz"))
        sitk.WriteImage(mask.to_sitk(), str(root / "labelsTr" / f"ph{k}.nii.gz"))
    data = ["--set=data.layout=nnunet", f"--set=data.root={root}", "--set=data.split=kfold", "--set=data.folds=5",
            '--set=data.cache_dir=""', "--size=64"]
    pack = tmp_path / "pack"
    assert tablepack.main(["build", *data, "--out", str(pack), "--part-mib", "0.05"]) == 0
    assert tablepack.main(["check", str(pack)]) == 0
    manifest = json.loads((pack / "train" / "pack.json").read_text())
    assert len(manifest["patients"]) == 4 and manifest["provenance"]["data"]["layout"] == "nnunet"

    # What the GPU machine does: no SimpleITK there, the raw data is not there either.
    (root / "imagesTr" / "ph0_0000.nii.gz").unlink()
    script = ("import sys; sys.modules['SimpleITK'] = None\n"
              "from training import train\n"
              f"sys.exit(train.main(['--set=data.pack={pack}', '--set=data.max_train_patients=3', '--size=64', "
              f"'--set=network.name=resnet18_classifier', '--set=loss.name=ce', '--batch-size=8', "
              f"'--device=cpu', '--max-epochs=1', '--out={tmp_path / 'run'}']))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_completed"] == 1
    assert (summary["train_patients"], summary["val_patients"]) == (3, 1)

    # A size other than the pack's is refused in one line, before any training.
    bad = script.replace("'--size=64'", "'--size=96'")
    done = subprocess.run([sys.executable, "-c", bad], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "prepared with" in done.stderr and done.stderr.count("\n") == 1


def test_a_pack_with_other_target_classes_serves_a_binary_run_too(tmp_path):
    from training.data import DataConfig, packed_tables

    t = table(2, 20)
    t.masks = np.where((t.masks == 0) & (t.images > 0.2), 2, t.masks).astype(np.uint8)  # an "other target" class
    tablestore.write_pack(t, SPEC, tmp_path / "p" / "train")
    tablestore.write_pack(t, SPEC, tmp_path / "p" / "val")
    multi, _ = packed_tables(DataConfig(pack=str(tmp_path / "p"), other_targets=("PTV63",)), SPEC, tmp_path)
    binary, _ = packed_tables(DataConfig(pack=str(tmp_path / "p")), SPEC, tmp_path)
    assert set(np.unique(multi.masks)) == {0, 1, 2} and set(np.unique(binary.masks)) == {0, 1}
    assert np.array_equal(binary.masks == 1, multi.masks == 1)
