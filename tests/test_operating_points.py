"""training.operating_points: every threshold's row is what the cascade itself gives at that threshold."""

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from GTVAutoSegLib.bundle import ModelBundle, save_bundle
from GTVAutoSegLib.metrics import dice, false_positive_slices, slice_flags, slice_recall
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.phantom import make_phantom
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.preprocessing import PreprocessSpec
from training import operating_points
from training.data import load_case, openkbp_cases


@pytest.fixture(scope="module")
def openkbp_like(tmp_path_factory):
    """One phantom patient in the OpenKBP layout with its target and an "Other" ROI covering the
    right half of the volume; a bundle of untrained (seeded) ResNet18 + SANet at 64 x 64."""
    root = tmp_path_factory.mktemp("okbp")
    case = root / "validation" / "pt_1"
    (case / "rois").mkdir(parents=True)
    ct, mask = make_phantom(shape=(12, 64, 64), spacing=(1.0, 1.0, 2.5), seed=5, tumour_slices=5)
    sitk.WriteImage(ct.to_sitk(), str(case / "ct.nii.gz"))
    sitk.WriteImage(mask.to_sitk(), str(case / "rois" / "PTV70.nii.gz"))
    other = np.zeros(mask.array.shape, np.uint8)
    other[:, :, 32:] = 1
    sitk.WriteImage(mask.with_array(other).to_sitk(), str(case / "rois" / "Other.nii.gz"))
    (root / "cases.json").write_text(json.dumps([{"split": "validation", "patient": "pt_1", "status": "ok",
                                                  "roi_voxels": {"PTV70": int(mask.array.sum())}}]))
    torch.manual_seed(0)
    c, s = NetConfig("resnet18_classifier"), NetConfig("sanet")
    bundle = ModelBundle.from_networks(build_network(c), build_network(s), name="untrained", version="0.0.1",
                                       classifier=c, segmenter=s, preprocess=PreprocessSpec(size=64), threshold=0.5)
    path = root / "b.pt"
    save_bundle(bundle, path)
    return root, path, bundle


def test_each_threshold_row_equals_the_cascade_at_that_threshold(openkbp_like):
    root, _, bundle = openkbp_like
    (case,) = openkbp_cases(root, "validation")
    image, ref = load_case(case)
    slice_probs = Segmenter(bundle, "cpu")(image).slice_probs
    # thresholds that select none, some and all of the slices
    mid = float(np.median(slice_probs))
    thresholds = sorted({float(slice_probs.min()), mid, float(np.nextafter(slice_probs.max(), 2.0))})
    rows = operating_points.case_rows(Segmenter(bundle, "cpu"), case, thresholds, ["Other", "Missing"])
    assert [r["threshold"] for r in rows[1:]] == thresholds and math.isnan(rows[0]["threshold"])
    alone = Segmenter(bundle, "cpu", use_classifier=False)(image).mask.array
    assert rows[0]["dice"] == dice(alone, ref.array)
    for t, row in zip(thresholds, rows[1:]):
        result = Segmenter(bundle, "cpu", threshold=t)(image)
        assert row["dice"] == dice(result.mask.array, ref.array)
        assert row["fp_slices"] == false_positive_slices(slice_flags(result.mask.array), ref.array)
        assert row["classifier_recall"] == slice_recall(result.selected, ref.array)
        assert row["classifier_fp_slices"] == false_positive_slices(result.selected, ref.array)
        fp = (result.mask.array > 0) & (ref.array == 0)
        assert row["fp_voxels"] == fp.sum() and row["fp_voxels_in_other_rois"] == fp[:, :, 32:].sum()
    assert rows[-1]["fp_slices"] == 0 and rows[-1]["classifier_recall"] == 0.0  # nothing selected


def test_cli_writes_the_table_and_refuses_bad_thresholds(openkbp_like, tmp_path, capsys):
    root, path, _ = openkbp_like
    out = tmp_path / "op"
    args = ["--bundle", str(path), "--set", f"data.root={root}", "--split", "validation", "--device", "cpu",
            "--other-rois", "Other"]
    assert operating_points.main([*args, "--thresholds", "0.2,0.7", "--out", str(out)]) == 0
    with open(out / "operating_points.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["threshold"] for r in rows] == ["nan", "0.2", "0.7"]
    summary = (out / "summary.md").read_text()
    assert "| alone (every slice) |" in summary and "| 0.7 |" in summary and "other ROIs: Other" in summary
    bad = tmp_path / "bad"
    for value in ("0.2,x", "1.5"):
        capsys.readouterr()
        assert operating_points.main([*args, "--thresholds", value, "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --thresholds") and "\n" not in err
    assert not bad.exists()


def test_rows_equal_the_cascade_when_the_locator_gates_and_averages(openkbp_like):
    from GTVAutoSegLib.cascade import CombineSpec
    from GTVAutoSegLib.coarse import CoarseSpec

    root, _, _ = openkbp_like
    (case,) = openkbp_cases(root, "validation")
    image, ref = load_case(case)
    torch.manual_seed(1)
    loc = NetConfig("unet3d", params={"channels": [4, 8], "strides": [2]})
    seg = NetConfig("unet", in_channels=3, params={"channels": [4, 8, 16], "strides": [2, 2]})
    bundle = ModelBundle.from_networks(None, build_network(seg), locator_net=build_network(loc), name="loc",
                                       version="0", classifier=None, segmenter=seg, locator=loc,
                                       preprocess=PreprocessSpec(size=64), coarse=CoarseSpec((16, 32, 32)),
                                       segmenter_context=3, threshold=0.5,
                                       combine=CombineSpec(gate="locator", locator_weight=0.5))
    probs = Segmenter(bundle, "cpu")(image).slice_probs
    thresholds = sorted({float(probs.min()), float(np.median(probs)), float(np.nextafter(probs.max(), 2.0))})
    rows = operating_points.case_rows(Segmenter(bundle, "cpu"), case, thresholds, [])
    for t, row in zip(thresholds, rows[1:]):
        result = Segmenter(bundle, "cpu", threshold=t)(image)
        assert row["dice"] == dice(result.mask.array, ref.array)
        assert row["classifier_fp_slices"] == false_positive_slices(result.selected, ref.array)
    assert rows[-1]["classifier_recall"] == 0.0 and rows[1]["classifier_recall"] == 1.0


def test_segmenter_alone_never_loads_the_classifier(openkbp_like, monkeypatch):
    """The "segmenter alone" arm pays for no classifier: not built, not run; its result is the
    cascade's with every slice selected, and the per-slice probabilities stay NaN."""
    from GTVAutoSegLib.errors import GTVError

    root, _, bundle = openkbp_like
    (case,) = openkbp_cases(root, "validation")
    image, _ = load_case(case)
    everything = Segmenter(bundle, "cpu", threshold=-1.0)(image)  # the classifier runs, selects all
    monkeypatch.setattr(ModelBundle, "build_classifier", lambda self: pytest.fail("classifier built"))
    alone = Segmenter(bundle, "cpu", use_classifier=False)
    assert alone.cascade.classifier is None and alone.cascade.has_classifier
    result = alone(image)
    assert np.array_equal(result.mask.array, everything.mask.array) and result.selected.all()
    assert np.isnan(result.slice_probs).all()
    with pytest.raises(GTVError, match="without its classifier"):
        alone.cascade(np.zeros((4, 64, 64), np.float32), 0.5, use_classifier=True)
