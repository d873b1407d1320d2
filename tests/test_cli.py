import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from GTVAutoSegLib import io
from GTVAutoSegLib.bundle import ModelBundle, save_bundle
from GTVAutoSegLib.cli import case_name, main
from GTVAutoSegLib.metrics import dice
from GTVAutoSegLib.models import NetConfig, build_network
from GTVAutoSegLib.preprocessing import PreprocessSpec

from test_cascade import _fake_bundle, _phantom_with_marker

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture
def case(tmp_path):
    ct, marker = _phantom_with_marker(direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    ct_path = tmp_path / "pt_7" / "ct.nii.gz"
    ct_path.parent.mkdir()
    sitk.WriteImage(ct.to_sitk(), str(ct_path))
    ref_path = tmp_path / "pt_7" / "ref.nii.gz"
    io.write_labelmap(ct.with_array(marker), ref_path)
    model = tmp_path / "fake.pt"
    save_bundle(_fake_bundle(), model)
    return ct, marker, ct_path, ref_path, model


def test_segment_writes_seg_nrrd_labelmap_report_and_png_on_the_input_grid(case, tmp_path, capsys):
    ct, marker, ct_path, ref_path, model = case
    out = tmp_path / "out"
    rc = main(["segment", str(ct_path), "-o", str(out), "--model", str(model), "--device", "cpu",
               "--reference", str(ref_path), "--png", "--progress", "none"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pt_7" in printed and "Dice vs reference" in printed
    assert sorted(p.name for p in out.iterdir()) == ["pt_7.seg.nrrd", "pt_7_label.nii.gz", "pt_7_overview.png",
                                                      "pt_7_report.json"]
    label = io.read_mask(out / "pt_7_label.nii.gz")
    assert label.same_grid(ct) and dice(label.array, marker) >= 0.9
    seg = slicerio.read_segmentation(str(out / "pt_7.seg.nrrd"))
    assert seg["segments"][0]["name"] == "GTV"
    report = json.loads((out / "pt_7_report.json").read_text())
    assert len(report["slice_probabilities"]) == ct.array.shape[0]
    assert report["slices_segmented"] == 4
    assert report["reference"]["dice"] >= 0.9
    # The reported volume is the written mask's, in cc from the physical spacing.
    assert report["volume_cc"] == pytest.approx(label.array.sum() * np.prod(ct.spacing) / 1000, abs=1e-3)
    assert report["volume_cc"] == pytest.approx(marker.sum() * np.prod(ct.spacing) / 1000, rel=0.25)
    assert (out / "pt_7_overview.png").read_bytes()[:4] == b"\x89PNG"


def test_no_classifier_segments_every_slice_and_reports_null_probabilities(case, tmp_path, capsys):
    ct, marker, ct_path, _, model = case
    out = tmp_path / "out"
    rc = main(["segment", str(ct_path), "-o", str(out), "--model", str(model), "--device", "cpu",
               "--no-classifier", "--progress", "none"])
    assert rc == 0
    report = json.loads((out / "pt_7_report.json").read_text())
    assert report["slices_segmented"] == report["slices_total"] == ct.array.shape[0]
    assert report["slice_probabilities"] == [None] * ct.array.shape[0]


def test_precision_is_chosen_recorded_and_forwarded_by_batch(case, tmp_path, capsys):
    from GTVAutoSegLib.raybatch import segment_flags

    _, _, ct_path, _, model = case
    for precision, ran in (("auto", "fp32"), ("bf16", "bf16")):
        out = tmp_path / precision
        assert main(["segment", str(ct_path), "-o", str(out), "--model", str(model), "--device", "cpu",
                     "--precision", precision, "--progress", "none"]) == 0
        assert json.loads((out / "pt_7_report.json").read_text())["precision"] == ran
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "x"), "--precision", "fp16"]) == 2
    assert "--precision" in capsys.readouterr().err
    from GTVAutoSegLib.cli import build_parser

    flags = segment_flags(build_parser().parse_args(["batch", str(ct_path), "-o", "o", "--precision", "bf16"]))
    assert flags[flags.index("--precision") + 1] == "bf16"


def test_progress_lines_are_parseable(case, tmp_path, capsys):
    _, _, ct_path, _, model = case
    assert main(["segment", str(ct_path), "-o", str(tmp_path / "o"), "--model", str(model), "--progress", "lines"]) == 0
    lines = [l.split() for l in capsys.readouterr().out.splitlines() if l.startswith("PROGRESS")]
    values = [float(l[1]) for l in lines]
    assert values == sorted(values) and values[-1] == 100.0
    assert {l[2] for l in lines} >= {"read", "preprocess", "classifier", "segmenter", "inverse", "write"}


def test_evaluate_prints_csv_with_mean(case, tmp_path, capsys):
    ct, marker, ct_path, ref_path, model = case
    pred = tmp_path / "pred.nii.gz"
    shifted = np.roll(marker, 2, axis=2)
    io.write_labelmap(ct.with_array(shifted), pred)
    csv_path = tmp_path / "m.csv"
    assert main(["evaluate", str(pred), str(ref_path), "--csv", str(csv_path)]) == 0
    rows = csv_path.read_text().splitlines()
    header = rows[0].split(",")
    assert rows[-1].startswith("mean,")
    d = float(rows[1].split(",")[header.index("dice")])
    assert d == pytest.approx(dice(shifted, marker), abs=1e-6)


def test_evaluate_refuses_different_grids(case, tmp_path, capsys):
    ct, marker, _, ref_path, _ = case
    other = tmp_path / "other.nii.gz"
    io.write_labelmap(ct.with_array(marker)._replace(spacing=(2.0, 2.0, 2.0)) if hasattr(ct, "_replace") else
                      io.Image(marker, (2.0, 2.0, 2.0), ct.origin, ct.direction), other)
    assert main(["evaluate", str(other), str(ref_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "different grids" in err and len(err.splitlines()) == 1


def _assert_one_line_error(capsys, rc, needle):
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gtvautoseg: error:")
    assert needle.lower() in err.lower()


@pytest.mark.parametrize("kind", ["missing", "text", "2d", "nan", "air"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys, kind):
    *_, model = case
    # NRRD keeps NaN (ITK's NIfTI writer does not).
    bad = tmp_path / "bad.nrrd"
    needle = {"missing": "not found", "text": "", "2d": "2D", "nan": "NaN", "air": "air"}[kind]
    if kind == "text":
        bad.write_text("this is not an image\n")
    elif kind == "2d":
        sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(bad))
    elif kind == "nan":
        a = np.zeros((4, 32, 32), np.float32)
        a[1, 2, 3] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(a), str(bad))
    elif kind == "air":
        air = np.random.default_rng(0).integers(-1024, -950, size=(4, 32, 32)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(air), str(bad))
    out = tmp_path / "out"
    _assert_one_line_error(capsys, main(["segment", str(bad), "-o", str(out), "--model", str(model)]), needle)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["missing", "truncated", "not_a_bundle"])
def test_bad_model_is_one_line(case, tmp_path, capsys, kind):
    _, _, ct_path, _, model = case
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(model.read_bytes()[:1000])
    elif kind == "not_a_bundle":
        bad.write_text("hello")
    rc = main(["segment", str(ct_path), "-o", str(tmp_path / "o"), "--model", str(bad)])
    _assert_one_line_error(capsys, rc, "model" if kind != "missing" else "neither a listed model")


def test_info_describes_a_model(case, capsys):
    *_, model = case
    assert main(["info", str(model)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["name"] == "fake" and meta["preprocess"]["size"] == 64 and "parameters" in meta
    assert meta["onnx_export"]["state"].startswith("not exported yet")


@pytest.mark.parametrize("model,networks", [(None, {"segmenter", "locator"}),
                                            ("hcf-openkbp-ptv70@0.1.0", {"classifier", "segmenter"})])
def test_info_describes_the_shipped_models_whatever_networks_they_have(capsys, model, networks):
    # 0.2.0 has no classifier: info once died on it with a traceback
    assert main(["info", *([model] if model else [])]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert set(meta["parameters"]) == networks and all(v > 1_000_000 for v in meta["parameters"].values())


def test_case_names(tmp_path):
    (tmp_path / "pt_3").mkdir()
    assert case_name(tmp_path / "pt_3" / "ct.nii.gz") == "pt_3"
    assert case_name(tmp_path / "lung1_image.nrrd") == "lung1_image"
    assert case_name(tmp_path / "pt_3") == "pt_3"


def test_console_script_runs_a_real_sanet_bundle(tmp_path):
    """The installed ``gtvautoseg`` entry point, in its own process, with the real networks."""
    ct, _ = _phantom_with_marker()
    ct_path = tmp_path / "case.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(ct_path))
    c, s = NetConfig("resnet18_classifier"), NetConfig("sanet")
    b = ModelBundle.from_networks(build_network(c), build_network(s), name="untrained", version="0",
                                  classifier=c, segmenter=s, preprocess=PreprocessSpec(size=64), threshold=0.0)
    save_bundle(b, tmp_path / "u.pt")
    exe = ROOT / ".venv" / "bin" / "gtvautoseg"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "GTVAutoSegLib.cli"]
    r = subprocess.run(cmd + ["segment", str(ct_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "u.pt"),
                              "--device", "cpu", "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "o" / "case_report.json").read_text())
    assert report["slices_segmented"] == ct.array.shape[0]  # threshold 0: every slice
    assert io.read_mask(tmp_path / "o" / "case_label.nii.gz").same_grid(ct)
    r = subprocess.run(cmd + ["--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "segment" in r.stdout and "evaluate" in r.stdout and "info" in r.stdout


def test_overview_zooms_to_the_body_and_the_masks():
    from GTVAutoSegLib.phantom import make_phantom
    from GTVAutoSegLib.report import zoom_box

    ct, mask = make_phantom(shape=(12, 64, 64), spacing=(2.0, 2.0, 3.0), seed=0, contrast_hu=150.0)
    field = np.full((12, 200, 200), -1000, np.int16)  # a wide field of air around the body
    field[:, 60:124, 80:144] = ct.array
    seg = np.zeros(field.shape, np.uint8)
    seg[:, 60:124, 80:144] = mask.array
    z0, z1, y0, y1, x0, x1 = zoom_box(field, [seg], (2.0, 2.0, 3.0), margin_mm=10.0)
    assert (z0, z1) == (0, 11)
    assert 60 - 5 <= y0 and y1 <= 123 + 5 and 80 - 5 <= x0 and x1 <= 143 + 5  # the body's patch and 10 mm
    zs, ys, xs = np.nonzero(seg)
    assert y0 <= ys.min() and ys.max() <= y1 and x0 <= xs.min() and xs.max() <= x1
    assert zoom_box(np.full((2, 8, 8), -1000, np.int16), [], (1.0, 1.0, 1.0)) == (0, 1, 0, 7, 0, 7)
