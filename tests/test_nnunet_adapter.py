"""The nnU-Net adapter on two phantom volumes: export to nnU-Net v2's raw layout and back, and
predictions read onto the input grid. (nnU-Net itself is not run here.)"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib import io
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.metrics import dice
from GTVAutoSegLib.phantom import make_phantom
from training.comparison import nnunet
from training.data import CaseRef, load_case, nnunet_cases


@pytest.fixture
def two_cases(tmp_path):
    cases = []
    for k, direction in enumerate([None, (1, 0, 0, 0, -1, 0, 0, 0, 1)]):
        ct, mask = make_phantom(shape=(14, 48, 40), spacing=(0.8, 0.9, 2.5), seed=k, tumour_slices=5,
                                direction=direction)
        # a label map with another structure (value 2) beside the target (value 1)
        labels = mask.array.astype(np.uint8)
        labels[0, :4, :4] = 2
        d = tmp_path / "src" / f"pt_{k}"
        d.mkdir(parents=True)
        sitk.WriteImage(ct.to_sitk(), str(d / "ct.nii.gz"))
        io.write_labelmap(ct.with_array(labels), d / "labels.nii.gz")
        cases.append(CaseRef(f"pt_{k}", d / "ct.nii.gz", d / "labels.nii.gz", label_value=1))
    return cases


def test_export_writes_nnunet_v2_raw_layout_and_reads_back_identical(two_cases, tmp_path):
    train, val = [two_cases[0]], [two_cases[1]]
    folder = nnunet.export_raw(train, val, tmp_path / "raw", 501, "Phantom", target="PTV70")
    assert folder.name == "Dataset501_Phantom"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "PTV70": 1}, "numTraining": 2,
                    "file_ending": ".nii.gz"}
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["pt_0_0000.nii.gz", "pt_1_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["pt_0.nii.gz", "pt_1.nii.gz"]
    assert [p.name for p in (folder / "imagesTs").iterdir()] == ["pt_1_0000.nii.gz"]
    assert json.loads((folder / "split.json").read_text()) == {"train": ["pt_0"], "val": ["pt_1"]}

    back = {c.patient: c for c in nnunet_cases(folder)}
    for case in two_cases:
        ct, mask = load_case(case)
        ct2, mask2 = load_case(back[case.patient])
        assert ct2.same_grid(ct) and np.array_equal(ct2.array, ct.array)
        assert np.array_equal(mask2.array, mask.array) and mask2.array.sum() > 0
        label = io.read_mask(folder / "labelsTr" / f"{case.patient}.nii.gz")
        assert set(np.unique(label.array).tolist()) == {0, 1}  # only the target, as label 1
    assert not list(folder.rglob(".*tmp-*"))  # no temporary file left behind


def test_export_refuses_overlapping_or_empty_splits(two_cases, tmp_path):
    with pytest.raises(GTVError, match="both sides"):
        nnunet.export_raw(two_cases, [two_cases[0]], tmp_path / "raw", 501, "Phantom")
    with pytest.raises(GTVError, match="at least one"):
        nnunet.export_raw(two_cases, [], tmp_path / "raw", 501, "Phantom")
    with pytest.raises(GTVError, match="1 to 999"):
        nnunet.dataset_name(1000, "Phantom")
    with pytest.raises(GTVError, match="without"):
        nnunet.dataset_name(5, "Open_KBP")


def test_predictions_are_read_onto_the_input_grid_and_scored(two_cases, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    ct0, mask0 = load_case(two_cases[0])
    ct1, mask1 = load_case(two_cases[1])
    # case 0: nnU-Net's usual output, the input's own grid
    io.write_labelmap(mask0, pred_dir / "pt_0.nii.gz")
    # case 1: the same mask stored on another grid (x flipped, rows reversed to match): the reader
    # must map it by physical position, not by array index
    flipped = sitk.Flip(mask1.to_sitk(), [True, False, False])
    sitk.WriteImage(flipped, str(pred_dir / "pt_1.nii.gz"))
    assert not io.read_mask(pred_dir / "pt_1.nii.gz").same_grid(ct1)
    read1 = nnunet.read_prediction(pred_dir / "pt_1.nii.gz", ct1)
    assert read1.same_grid(ct1) and dice(read1.array, mask1.array) >= 0.99

    rows = nnunet.evaluate_predictions(pred_dir, two_cases, seconds_per_case=1.5)
    assert [r["patient"] for r in rows] == ["pt_0", "pt_1"] and {r["arm"] for r in rows} == {"alone"}
    assert rows[0]["dice"] == pytest.approx(1.0) and rows[1]["dice"] >= 0.99
    assert rows[0]["fp_slices"] == 0 and math.isnan(rows[0]["classifier_recall"]) and rows[0]["seconds"] == 1.5


def test_bad_predictions_are_refused(two_cases, tmp_path):
    ct, mask = load_case(two_cases[0])
    with pytest.raises(GTVError, match="wrote no prediction"):
        nnunet.read_prediction(tmp_path / "missing.nii.gz", ct)
    sitk.WriteImage(ct.with_array(mask.array * 2).to_sitk(), str(tmp_path / "two.nii.gz"))
    with pytest.raises(GTVError, match="expected 0/1"):
        nnunet.read_prediction(tmp_path / "two.nii.gz", ct)


def test_run_without_the_nnunet_environment_says_how_to_make_it(tmp_path, capsys):
    rc = nnunet.main(["run", "--budget-min", "1", "--nnunet-python", str(tmp_path / "none" / "python")])
    assert rc == 2
    assert "scripts/setup_nnunet.sh" in capsys.readouterr().err
