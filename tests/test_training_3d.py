"""3D segmenters in training/: patches of consecutive slices, a real VNet run, and the bundle it
makes segmenting a CT through the library (the 3D V-Net row of the comparison)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from training import build_bundle
from training.config import load_config
from training.train import Trainer
from training.volumes import VolumeSource, patch_count

from test_training import phantom_table, tiny_config

torch.set_flush_denormal(True)


def test_patches_are_consecutive_slices_of_one_patient():
    table = phantom_table(3, 0)  # 3 patients x 12 slices
    # shuffle the rows: patients must be re-assembled by slice index, not by row order
    perm = np.random.default_rng(0).permutation(len(table))
    table = type(table)(table.images[perm], table.masks[perm], table.patient[perm], table.slice_index[perm],
                        table.tumour[perm], table.patients, table.spacing)
    src = VolumeSource(table, torch.device("cpu"), depth=8)
    for row in range(len(table)):
        rows = src.window_rows(row)
        assert rows.size == 8 and (table.patient[rows] == table.patient[row]).all()
        assert np.array_equal(table.slice_index[rows], np.arange(table.slice_index[rows][0], table.slice_index[rows][0] + 8))
        assert row in rows
    x, y, flag = src.batch(np.array([0, 5]))
    assert x.shape == (2, 1, 8, 64, 64) and y.shape == (2, 8, 64, 64) and flag.shape == (2,)
    rows = src.window_rows(0)
    assert torch.equal(x[0, 0], torch.from_numpy(table.images[rows]).float())
    assert bool(flag[0]) == bool(table.tumour[rows].any())

    deep = VolumeSource(table, torch.device("cpu"), depth=16)  # deeper than a patient: zero padding
    rows = deep.window_rows(0)
    assert (rows[12:] == -1).all() and (rows[:12] >= 0).all()
    x, y, _ = deep.batch(np.array([0]))
    assert x[0, 0, 12:].abs().sum() == 0 and y[0, 12:].sum() == 0
    assert patch_count(1024, 32) == 32 and patch_count(5, 32) == 1


def test_vnet_trains_validates_and_segments_through_the_library(tmp_path):
    train_t, val_t = phantom_table(4, 0), phantom_table(2, 100)
    cfg = tiny_config(tmp_path, 'network={"name": "vnet", "params": {"patch_depth": 16}}', "augment.enabled=false",
                      "batch_size=2", "max_epochs=1", "max_slices_per_epoch=64", 'balance="1:1"')
    trainer = Trainer(cfg, train_t, val_t)
    summary = trainer.fit()
    row = trainer.history[0]
    # BSS 1:1 draws 24 + 24 slices -> 3 patches of 16 -> one batch of 2 (a last batch of 1 is dropped)
    assert row["steps"] == 1 and row["slices"] == 2 * 16
    assert 0.0 <= row["val_dice"] <= 1.0 and np.isfinite(row["val_loss"]) and row["val_patients"] == 2
    assert summary["kind"] == "segmenter3d" and (tmp_path / "run" / "best.pt").is_file()

    cls = Trainer(tiny_config(tmp_path / "c", 'network={"name": "resnet18_classifier"}', 'loss={"name": "ce"}',
                              "max_epochs=1", "max_slices_per_epoch=16"), train_t, val_t)
    cls.fit()
    bundle_path = tmp_path / "vnet.pt"
    assert build_bundle.main(["--classifier", str(tmp_path / "c" / "run" / "best.pt"), "--segmenter",
                              str(tmp_path / "run" / "best.pt"), "--out", str(bundle_path)]) == 0
    from GTVAutoSegLib.bundle import load_bundle

    seg = Segmenter(load_bundle(bundle_path), "cpu", use_classifier=False)
    assert seg.cascade.segmenter_depth == 16
    ct, _ = make_phantom(shape=(20, 70, 64), spacing=(1.0, 1.0, 2.5), seed=7)
    with torch.inference_mode():
        result = seg(ct)
    assert result.mask.same_grid(ct) and result.selected.all()


def test_3d_config_refuses_2d_augmentation():
    with pytest.raises(GTVError, match="augmentation of 3D patches is not implemented"):
        load_config(None, ['network={"name": "vnet"}'])
