"""Issue 12 items 6 and 8-12: what the CLI refuses, and that outputs of a case appear all or none."""

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib import io, report
from GTVAutoSegLib.bundle import save_bundle
from GTVAutoSegLib.cli import main

from test_cascade import _fake_bundle, _phantom_with_marker


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fake.pt"
    save_bundle(_fake_bundle(), path)
    return path


@pytest.fixture
def ct_file(tmp_path):
    ct, _ = _phantom_with_marker()
    path = tmp_path / "pt_1" / "ct.nii.gz"
    path.parent.mkdir()
    sitk.WriteImage(ct.to_sitk(), str(path))
    return path


def _segment(*args, model):
    return main(["segment", *map(str, args), "--model", str(model), "--device", "cpu", "--progress", "none"])


def _one_line(capsys, rc, needle, code=2):
    assert rc == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gtvautoseg: error:"), err
    assert needle.lower() in err.lower(), err
    return err


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "2", "-1", "1.5", "abc"])
def test_threshold_outside_0_1_is_refused(ct_file, model, tmp_path, capsys, value):
    out = tmp_path / "out"
    rc = _segment(ct_file, "-o", out, "--threshold", value, model=model)
    _one_line(capsys, rc, "threshold")
    assert _tree(out) == []


def test_report_is_strict_json_even_with_non_finite_values(tmp_path):
    report.write_json({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}}, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}


def test_two_inputs_with_one_case_name_are_refused(model, tmp_path, capsys):
    ct, _ = _phantom_with_marker()
    paths = []
    for side in ("a", "b"):
        path = tmp_path / side / "pt_1" / "ct.nii.gz"
        path.parent.mkdir(parents=True)
        sitk.WriteImage(ct.to_sitk(), str(path))
        paths.append(path)
    out = tmp_path / "out"
    err = _one_line(capsys, _segment(*paths, "-o", out, model=model), "both give the case name 'pt_1'")
    assert str(paths[0]) in err and str(paths[1]) in err
    assert _tree(out) == []


def test_evaluate_csv_onto_an_input_mask_is_refused(tmp_path, capsys):
    ct, marker = _phantom_with_marker()
    ref = tmp_path / "ref.nii.gz"
    io.write_labelmap(ct.with_array(marker), ref)
    before = ref.read_bytes()
    rc = main(["evaluate", str(ref), str(ref), "--csv", str(ref)])
    _one_line(capsys, rc, "would overwrite the input")
    assert ref.read_bytes() == before


def test_evaluate_csv_onto_a_folder_is_one_line(tmp_path, capsys):
    ct, marker = _phantom_with_marker()
    ref = tmp_path / "ref.nii.gz"
    io.write_labelmap(ct.with_array(marker), ref)
    (tmp_path / "csvdir").mkdir()
    rc = main(["evaluate", str(ref), str(ref), "--csv", str(tmp_path / "csvdir")])
    _one_line(capsys, rc, "is a folder")


def test_outputs_never_overwrite_the_input(model, tmp_path, capsys):
    ct, _ = _phantom_with_marker()
    src = tmp_path / "x_label.nii.gz"  # what "--name x" would write into the same folder
    sitk.WriteImage(ct.to_sitk(), str(src))
    before = src.read_bytes()
    rc = _segment(src, "-o", tmp_path, "--name", "x", model=model)
    _one_line(capsys, rc, "would overwrite the input")
    assert src.read_bytes() == before and _tree(tmp_path) == ["x_label.nii.gz"]


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", "..", ".hidden", "", "tab\there"])
def test_name_cannot_leave_the_output_folder(ct_file, model, tmp_path, capsys, name):
    out = tmp_path / "deep" / "out"
    rc = _segment(ct_file, "-o", out, "--name", name, model=model)
    _one_line(capsys, rc, "case name")
    assert _tree(tmp_path / "deep") == [] and not Path("/tmp/abs.seg.nrrd").exists()


def test_output_that_is_a_file_or_under_a_file_is_one_line(ct_file, model, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    _one_line(capsys, _segment(ct_file, "-o", blocker, model=model), "not a folder")
    _one_line(capsys, _segment(ct_file, "-o", blocker / "sub", model=model), "is a file")


def test_unwritable_output_folder_is_one_line(ct_file, model, tmp_path, capsys, monkeypatch):
    # The suite runs as root, who may write anywhere: the refusal is simulated where it comes from.
    real_touch = Path.touch

    def deny(self, *args, **kwargs):
        if self.name.startswith(".gtvautoseg-probe-"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", deny)
    _one_line(capsys, _segment(ct_file, "-o", tmp_path / "out", model=model), "permission denied")


def test_a_240_character_name_is_written_and_a_longer_one_refused(ct_file, model, tmp_path, capsys):
    out = tmp_path / "out"
    assert _segment(ct_file, "-o", out, "--name", "n" * 240, model=model) == 0
    assert len(_tree(out)) == 3 and not any(".tmp-" in p for p in _tree(out))
    capsys.readouterr()
    _one_line(capsys, _segment(ct_file, "-o", tmp_path / "o2", "--name", "n" * 250, model=model), "too long")


def test_png_of_a_one_slice_ct_is_written(model, tmp_path, capsys):
    ct, _ = _phantom_with_marker()
    one = sitk.GetImageFromArray(ct.array[7:8])
    one.SetSpacing(ct.spacing)
    sitk.WriteImage(one, str(tmp_path / "one.nrrd"))
    out = tmp_path / "out"
    assert _segment(tmp_path / "one.nrrd", "-o", out, "--png", model=model) == 0
    assert (out / "one_overview.png").read_bytes()[:4] == b"\x89PNG"


def test_a_full_disk_at_the_report_leaves_no_output_of_the_case(ct_file, model, tmp_path, capsys, monkeypatch):
    def full(data, path):
        Path(path).write_text("{")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "write_json", full)
    out = tmp_path / "out"
    _one_line(capsys, _segment(ct_file, "-o", out, model=model), "disk or quota is full")
    assert _tree(out) == []  # not seg + label without report


def test_sigterm_while_writing_is_as_clean_as_ctrl_c(ct_file, model, tmp_path, capsys, monkeypatch):
    real = io.write_labelmap

    def killed(mask, path):
        real(mask, path)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(io, "write_labelmap", killed)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or a handler an earlier test's local Ray left
    assert _segment(ct_file, "-o", out, model=model) == 143
    assert "terminated" in capsys.readouterr().err
    assert _tree(out) == []
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored


def test_sigterm_during_the_renames_waits_until_the_case_is_complete(ct_file, model, tmp_path, monkeypatch):
    real = Path.replace
    sent = []

    def replace(self, target):
        if not sent and not Path(target).name.startswith("."):  # the first rename onto a final name
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        return real(self, target)

    monkeypatch.setattr(Path, "replace", replace)
    out = tmp_path / "out"
    assert _segment(ct_file, "-o", out, model=model) == 143
    assert _tree(out) == ["pt_1.seg.nrrd", "pt_1_label.nii.gz", "pt_1_report.json"]


def test_usage_errors_are_one_line(capsys):
    assert main(["segment"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("gtvautoseg: error:")


def test_one_bad_input_among_good_ones_is_reported_and_the_others_written(ct_file, model, tmp_path, capsys):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    assert _segment(bad, ct_file, "-o", out, model=model) == 2
    assert sorted(_tree(out)) == ["pt_1.seg.nrrd", "pt_1_label.nii.gz", "pt_1_report.json"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.nii.gz" in err[0]
