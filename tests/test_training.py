"""training/: readers on real data, splits, BSS, augmentation, a real learning check, resume, the
time budget, and the CLI chain train -> build_bundle -> Segmenter / evaluate.

Everything trains at 64 x 64 on synthetic phantoms or a few real OpenKBP slices; nothing is timed.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GTVAutoSegLib.bundle import ModelBundle, load_bundle, save_bundle
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.io import read_ct, read_mask
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec, prepare
from training import build_bundle, evaluate, train
from training.augment import AugmentConfig, augment_batch
from training.config import load_config
from training.data import (DataConfig, SliceTable, build_slice_table, kfold_patients, nnunet_cases,
                           openkbp_cases, prepare_case, split_cases, structseg_cases)
from training.engine import epoch_rows, operating_threshold
from training.train import Trainer

SPEC64 = PreprocessSpec(size=64)


def phantom_table(n: int, seed: int, contrast_hu: float = 150.0) -> SliceTable:
    """``n`` phantoms of 12 slices (6 with tumour) in model space at 64 x 64."""
    parts = []
    for k in range(n):
        ct, mask = make_phantom(shape=(12, 64, 64), spacing=(1.0, 1.0, 2.5), seed=seed + k,
                                contrast_hu=contrast_hu, tumour_slices=6)
        parts.append((f"ph{seed + k}", *prepare_case(ct, mask, SPEC64)))
    return SliceTable.concatenate(parts)


def tiny_config(tmp_path: Path, *extra: str):
    return load_config(None, ['preprocess={"size": 64}', "batch_size=8", "val_batch_size=16", 'device="cpu"',
                              f'out_dir="{tmp_path / "run"}"', *extra])


# ----------------------------------------------------------------------------- readers on real data


def test_openkbp_reader_flags_match_masks(shared_data):
    root = shared_data / "openkbp"
    cases = openkbp_cases(root, "train", "PTV70")[:3]
    listing = {r["patient"]: r for r in json.loads((root / "cases.json").read_text())}
    assert all(listing[c.patient]["status"] == "ok" and "PTV70" in listing[c.patient]["roi_voxels"] for c in cases)
    spec = PreprocessSpec(size=64)
    table = build_slice_table(cases, spec)
    assert table.images.dtype == np.float16 and table.masks.dtype == np.uint8
    assert table.images.shape[1:] == (64, 64) and 0.0 <= table.images.min() and table.images.max() <= 1.0
    has_mask = table.masks.reshape(len(table), -1).any(1)
    assert not (has_mask & ~table.tumour).any()  # no label pixel on a slice flagged normal
    assert (has_mask == table.tumour).mean() > 0.97  # a sliver may vanish at 64 x 64, rarely
    for i, case in enumerate(cases):
        rows = table.patient == i
        mask = read_mask(case.label)
        _, state = prepare(read_ct(case.image), spec)
        # model slice k is original slice original_slice_index[k]; tumour slices must be the same ones
        original = mask.array.reshape(mask.array.shape[0], -1).any(1)[state.original_slice_index]
        np.testing.assert_array_equal(table.tumour[rows], original)
        np.testing.assert_array_equal(table.slice_index[rows], np.arange(rows.sum()))
    assert 0.1 < table.tumour.mean() < 0.6  # PTV70 is on about 31 % of slices


def test_lung_nrrd_through_nnunet_and_structseg_layouts(shared_data, tmp_path):
    lung = shared_data / "lung_pyradiomics"
    nn_root, ss_root = tmp_path / "nnunet", tmp_path / "structseg"
    (nn_root / "imagesTr").mkdir(parents=True)
    (nn_root / "labelsTr").mkdir()
    for name in ("lung1", "lung2"):
        # links, not copies: the real data stays in ../shared/data
        (nn_root / "imagesTr" / f"{name}_0000.nrrd").symlink_to(lung / f"{name}_image.nrrd")
        (nn_root / "labelsTr" / f"{name}.nrrd").symlink_to(lung / f"{name}_label.nrrd")
        (ss_root / name).mkdir(parents=True)
        (ss_root / name / "data.nrrd").symlink_to(lung / f"{name}_image.nrrd")
        (ss_root / name / "label.nrrd").symlink_to(lung / f"{name}_label.nrrd")
    nn_cases, ss_cases = nnunet_cases(nn_root), structseg_cases(ss_root)
    assert [c.patient for c in nn_cases] == [c.patient for c in ss_cases] == ["lung1", "lung2"]
    table = build_slice_table(nn_cases, PreprocessSpec(window=(-800.0, 400.0), size=128), cache_dir=tmp_path / "cache")
    per_patient = [int(table.tumour[table.patient == i].sum()) for i in range(2)]
    assert per_patient == [3, 11]  # the data's README: tumour on 3 and 11 slices
    np.testing.assert_array_equal(table.tumour, table.masks.reshape(len(table), -1).any(1))  # nothing lost at 128
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = build_slice_table(nn_cases, PreprocessSpec(window=(-800.0, 400.0), size=128), cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.masks, table.masks)
    with pytest.raises(GTVError, match="label.nii.gz"):
        structseg_cases(tmp_path / "nnunet")


def test_two_runs_preparing_the_same_case_at_once_both_get_the_cache(tmp_path, monkeypatch):
    # Two trainings started together on a cold cache both prepare pt_1; the second one writes and
    # renames its file while the first is between writing and renaming. Each writer must use its
    # own temporary name (the old shared ".tmp.npz" made the first rename fail).
    from training import data as data_mod
    ct, mask = make_phantom(shape=(8, 64, 64), spacing=(1.0, 1.0, 2.5), seed=3)
    sitk.WriteImage(ct.to_sitk(), str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(mask.to_sitk(), str(tmp_path / "mask.nii.gz"))
    case = data_mod.CaseRef("pt_1", tmp_path / "ct.nii.gz", tmp_path / "mask.nii.gz")
    cache, spec = tmp_path / "cache", SPEC64
    real_savez, calls = np.savez, []

    def savez_then_other_writer(file, **arrays):
        real_savez(file, **arrays)
        calls.append(file)
        if len(calls) == 1:  # the other run, in the middle of this one's write
            data_mod._load_or_prepare(case, spec, cache)

    monkeypatch.setattr(data_mod.np, "savez", savez_then_other_writer)
    images, masks, _, flags = data_mod._load_or_prepare(case, spec, cache)
    assert len(calls) == 2 and calls[0] != calls[1]
    assert [p.name for p in cache.iterdir()] == [f"pt_1-{data_mod._cache_key(case, spec)}.npz"]
    again = data_mod._load_or_prepare(case, spec, cache)
    np.testing.assert_array_equal(again[1], masks)
    np.testing.assert_array_equal(again[3], flags)


# ----------------------------------------------------------------------------- splits and sampling


def test_kfold_is_disjoint_by_patient_and_seeded():
    patients = [f"pt_{i}" for i in range(23)]
    folds = [kfold_patients(patients, 5, f, seed=3) for f in range(5)]
    seen = []
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert set(tr) | set(va) == set(patients)
        seen += va
    assert sorted(seen) == sorted(patients)  # each patient validates exactly once
    assert kfold_patients(patients, 5, 0, seed=3) == folds[0]
    assert kfold_patients(patients, 5, 0, seed=4) != folds[0]


def test_openkbp_fixed_split_is_disjoint(shared_data):
    cfg = DataConfig(root=str(shared_data / "openkbp"))
    train_cases, val_cases = split_cases(cfg, Path("."))
    assert len(train_cases) == 170 and len(val_cases) == 33
    assert not {c.patient for c in train_cases} & {c.patient for c in val_cases}
    kcfg = DataConfig(root=str(shared_data / "openkbp"), split="kfold", folds=5, fold=2, max_val_patients=4)
    tr, va = split_cases(kcfg, Path("."))
    assert len(va) == 4 and not {c.patient for c in tr} & {c.patient for c in va}


@pytest.mark.parametrize("ratio,normal_per_tumour", [("1:1", 1), ("1:0", 0), ("1:2", 2)])
def test_epoch_rows_respect_bss_ratio(ratio, normal_per_tumour):
    flags = np.zeros(300, bool)
    flags[np.random.default_rng(0).choice(300, 40, replace=False)] = True
    rows = epoch_rows(flags, ratio, seed=1, epoch=1, cap=None)
    assert flags[rows].sum() == 40 and (~flags[rows]).sum() == 40 * normal_per_tumour
    assert len(set(rows)) == rows.size
    np.testing.assert_array_equal(rows, epoch_rows(flags, ratio, seed=1, epoch=1, cap=None))
    capped = epoch_rows(flags, ratio, seed=1, epoch=1, cap=20)
    assert capped.size == 20 and set(capped) <= set(rows)
    if normal_per_tumour:  # a fresh draw of normal slices each epoch
        next_epoch = epoch_rows(flags, ratio, seed=1, epoch=2, cap=None)
        assert set(rows[~flags[rows]]) != set(next_epoch[~flags[next_epoch]])
    assert epoch_rows(flags, "original", 1, 1, None).size == 300


def test_operating_threshold_keeps_recall():
    probs = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.05])
    labels = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    t = operating_threshold(probs, labels, 0.75)
    assert t == pytest.approx(0.7)  # 3 of 4 positives at >= 0.7; the highest such threshold
    assert operating_threshold(probs, labels, 1.0) == pytest.approx(0.2)
    assert operating_threshold(probs, np.zeros(7, bool), 0.95) == 0.5


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_moves_image_and_mask_together():
    yy, xx = np.mgrid[:64, :64]
    mask = torch.from_numpy(((yy - 28) ** 2 + (xx - 36) ** 2 <= 100).astype(np.int64)).repeat(16, 1, 1)
    x = mask[:, None].float()
    geo = AugmentConfig(p_rotate=1.0, p_zoom=1.0, p_vflip=0.5, p_elastic=1.0, p_noise=0.0, p_erase=0.0)
    gen = torch.Generator().manual_seed(0)
    xa, ya = augment_batch(x, mask, geo, gen)
    assert xa.shape == x.shape and ya.shape == mask.shape and ya.dtype == torch.int64
    assert set(ya.unique().tolist()) <= {0, 1}
    assert not torch.equal(ya, mask)  # something moved
    inter = ((xa[:, 0] > 0.5) & (ya == 1)).sum()
    assert 2 * inter / ((xa[:, 0] > 0.5).sum() + ya.sum()) > 0.9  # ... and both moved the same way
    again = augment_batch(x, mask, geo, torch.Generator().manual_seed(0))[1]
    assert torch.equal(again, ya)  # seeded
    xo, yo = augment_batch(x, mask, AugmentConfig(enabled=False), gen)
    assert xo is x and yo is mask
    noisy, _ = augment_batch(x, None, AugmentConfig(p_rotate=0, p_zoom=0, p_vflip=0, p_elastic=0, p_noise=1, p_erase=1), gen)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, x)


# ----------------------------------------------------------------------------- training


def test_two_epochs_of_sanet_learn_on_phantoms(tmp_path):
    """A real learning check: validation Dice after 2 epochs beats the untrained network's."""
    train_t, val_t = phantom_table(40, 0), phantom_table(3, 100)
    cfg = tiny_config(tmp_path, 'network={"name": "sanet"}', "max_epochs=2", 'balance="1:0"',
                      "augment.enabled=false", "seed=0")
    trainer = Trainer(cfg, train_t, val_t)
    untrained = trainer.validate().metrics["val_dice"]
    summary = trainer.fit()
    dice = [r["val_dice"] for r in trainer.history]
    assert summary["stop_reason"] == "max_epochs" and len(dice) == 2
    assert dice[-1] > untrained + 0.2, (untrained, dice)
    out = tmp_path / "run"
    for name in ("best.pt", "last.pt", "log.csv", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["val_dice"]) == pytest.approx(dice[1], abs=1e-5)
    assert all(int(r["slices"]) == int(train_t.tumour.sum()) for r in rows)  # BSS 1:0: tumour slices only


def test_resume_continues_and_time_budget_stops(tmp_path):
    train_t, val_t = phantom_table(4, 0), phantom_table(2, 50)
    base = ('network={"name": "resnet18_classifier"}', 'loss={"name": "ce"}', 'balance="original"')
    first = Trainer(tiny_config(tmp_path, *base, "max_epochs=1"), train_t, val_t)
    first.fit()
    w1 = {k: v.clone() for k, v in first.net.state_dict().items()}
    second = Trainer(tiny_config(tmp_path, *base, "max_epochs=2"), train_t, val_t)
    second.resume(tmp_path / "run" / "last.pt")
    assert all(torch.equal(w1[k], v) for k, v in second.net.state_dict().items())
    summary = second.fit()
    assert [r["epoch"] for r in second.history] == [1, 2] and summary["epochs_completed"] == 2
    assert 0 <= summary["best_metrics"]["val_threshold"] <= 1

    budget = Trainer(tiny_config(tmp_path / "b", *base, "max_epochs=5", "time_budget_min=1e-4"), train_t, val_t)
    s = budget.fit()
    assert s["stop_reason"] == "time_budget"
    assert budget.history[-1]["partial"] and budget.history[-1]["steps"] == 1  # one step, then validate and save


def test_stop_decision_alone(tmp_path):
    train_t, val_t = phantom_table(2, 0), phantom_table(1, 50)
    cfg = tiny_config(tmp_path, 'network={"name": "resnet18_classifier"}', 'loss={"name": "ce"}', "patience=2")
    trainer = Trainer(cfg, train_t, val_t)
    assert trainer.stop_reason_after({"partial": False}) is None
    assert trainer.stop_reason_after({"partial": True}) == "time_budget"
    trainer.bad_epochs = 2
    assert trainer.stop_reason_after({"partial": False}) == "early_stopping"


def test_config_refuses_unknown_keys_and_wrong_loss(tmp_path):
    with pytest.raises(GTVError, match="unknown config key"):
        load_config(None, ["optim.learning_rate=0.1"])
    with pytest.raises(GTVError, match="cross-entropy"):
        load_config(None, ['network={"name": "resnet18_classifier"}', 'loss={"name": "dice"}'])
    with pytest.raises(GTVError, match="unknown network"):
        load_config(None, ['network={"name": "nope"}'])
    for path in sorted((Path(train.__file__).parent / "configs").glob("*.json")):
        load_config(path)  # the shipped configs parse


# ----------------------------------------------------------------------------- CLI chain on disk


@pytest.fixture(scope="module")
def nnunet_phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    (root / "imagesTr").mkdir()
    (root / "labelsTr").mkdir()
    for k in range(6):
        ct, mask = make_phantom(shape=(12, 64, 64), spacing=(1.0, 1.0, 2.5), seed=k, contrast_hu=150.0, tumour_slices=5)
        sitk.WriteImage(ct.to_sitk(), str(root / "imagesTr" / f"ph{k}_0000.nii.gz"))
        sitk.WriteImage(mask.to_sitk(), str(root / "labelsTr" / f"ph{k}.nii.gz"))
    return root


def test_cli_train_build_bundle_segment_and_evaluate(nnunet_phantoms, tmp_path, capsys):
    data = ["--set=data.layout=nnunet", f"--set=data.root={nnunet_phantoms}", "--set=data.split=kfold",
            "--set=data.folds=3", '--set=data.cache_dir=""', "--size=64", "--batch-size=8", "--device=cpu",
            "--max-epochs=1"]
    assert train.main(["--set=network.name=resnet18_classifier", "--set=loss.name=ce", *data,
                       f"--out={tmp_path / 'cls'}"]) == 0
    assert train.main(["--set=network.name=sanet", "--balance=1:1", *data, f"--out={tmp_path / 'seg'}"]) == 0
    bundle_path = tmp_path / "hcf.pt"
    assert build_bundle.main(["--classifier", str(tmp_path / "cls" / "best.pt"), "--segmenter",
                              str(tmp_path / "seg" / "best.pt"), "--out", str(bundle_path), "--half",
                              "--name", "smoke", "--version", "0.0.1"]) == 0
    printed = capsys.readouterr().out
    sha = printed.split("sha256 ")[1].split()[0]
    assert len(sha) == 64
    bundle = load_bundle(bundle_path, expected_sha256=sha)
    cls_best = json.loads((tmp_path / "cls" / "summary.json").read_text())
    assert bundle.threshold == pytest.approx(cls_best["best_metrics"]["val_threshold"])
    assert bundle.preprocess.size == 64 and bundle.provenance["segmenter"]["network"] == "sanet"
    assert bundle.provenance["classifier"]["run"]["train_patients"] == 4
    assert next(iter(bundle.segmenter_state.values())).dtype == torch.float16

    ct, _ = make_phantom(shape=(10, 80, 72), spacing=(0.9, 0.9, 3.0), seed=99)
    result = Segmenter(bundle, "cpu")(ct)
    assert result.mask.same_grid(ct) and result.slice_probs.shape == (10,)

    out = tmp_path / "eval"
    assert evaluate.main(["--bundle", str(bundle_path), *[a for a in data if a.startswith("--set")],
                          "--split", "config", "--device", "cpu", "--out", str(out)]) == 0
    with open(out / "per_patient.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["arm"] for r in rows}) == ["alone", "cascade"] and len(rows) == 4  # 2 patients x 2 arms
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0
        assert (r["arm"] == "cascade") == (not math.isnan(float(r["classifier_recall"])))
    assert "| cascade | 2 |" in (out / "summary.md").read_text()


def test_bench_throughput_runs(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_throughput

    assert bench_throughput.main(["--sizes", "32", "--batch", "2", "--steps", "1", "--warmup", "0",
                                  "--device", "cpu", "--table-slices", "8"]) == 0
    out = capsys.readouterr().out
    assert "| sanet | 32 |" in out and "| resnet18_classifier | 32 |" in out


def test_init_from_a_run_or_a_bundle_loads_its_weights_and_refuses_a_mismatch(tmp_path):
    train_t, val_t = phantom_table(3, 0), phantom_table(2, 50)
    seg = ('network={"name": "sanet"}', 'balance="1:0"', "augment.enabled=false")
    first = Trainer(tiny_config(tmp_path / "a", *seg, "max_epochs=1"), train_t, val_t)
    first.fit()
    trained = {k: v.clone() for k, v in first.net.state_dict().items()}

    second = Trainer(tiny_config(tmp_path / "b", *seg, "max_epochs=1", 'loss={"name": "dice_ce"}'), train_t, val_t)
    assert not all(torch.equal(trained[k], v) for k, v in second.net.state_dict().items())
    second.init_weights(str(tmp_path / "a" / "run" / "best.pt"))
    assert all(torch.equal(trained[k], v) for k, v in second.net.state_dict().items())
    assert second.epoch == 0 and second.fit()["init_from"].endswith("best.pt")

    # from a bundle: the segmenter of a cascade, stored in fp16
    c_cfg = NetConfig("resnet18_classifier")
    bundle = ModelBundle.from_networks(build_network(c_cfg), first.net, name="b", version="0", classifier=c_cfg,
                                       segmenter=first.cfg.network, preprocess=SPEC64)
    save_bundle(bundle, tmp_path / "hcf.pt", half=True)
    third = Trainer(tiny_config(tmp_path / "c", *seg), train_t, val_t)
    third.init_weights(str(tmp_path / "hcf.pt"))
    for k, v in third.net.state_dict().items():
        assert torch.allclose(v.float(), trained[k].float(), rtol=1e-3, atol=1e-3), k

    (tmp_path / "broken.pt").write_bytes((tmp_path / "hcf.pt").read_bytes()[:1000])
    with pytest.raises(GTVError, match="broken.pt is not a GTVAutoSeg model bundle"):
        third.init_weights(str(tmp_path / "broken.pt"))
    with pytest.raises(GTVError, match="neither a listed model"):
        third.init_weights(str(tmp_path / "nowhere.pt"))
    with pytest.raises(GTVError, match="this run trains unet"):
        Trainer(tiny_config(tmp_path / "d", 'network={"name": "unet"}'), train_t, val_t).init_weights(str(tmp_path / "hcf.pt"))
    other = tiny_config(tmp_path / "e", *seg, 'preprocess={"size": 64, "margin_mm": 5.0}')
    with pytest.raises(GTVError, match="trained with preprocessing"):
        Trainer(other, train_t, val_t).init_weights(str(tmp_path / "a" / "run" / "best.pt"))


def test_auc_is_the_rank_statistic_ties_counting_half():
    from training.engine import _auc

    assert _auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert _auc(np.array([0.5, 0.5, 0.5]), np.array([0, 1, 1], bool)) == 0.5
    assert math.isnan(_auc(np.array([0.1, 0.2]), np.array([1, 1], bool)))
    rng = np.random.default_rng(0)
    probs, labels = np.round(rng.random(500), 1), rng.random(500) > 0.7  # many ties
    from scipy.stats import rankdata

    ranks = rankdata(probs)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    assert _auc(probs, labels) == (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
