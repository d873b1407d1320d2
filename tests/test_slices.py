"""Correcting the classifier's slice decision: the library, the pipeline and the command line."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib.bundle import save_bundle
from GTVAutoSegLib.cli import main
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.pipeline import Segmenter
from GTVAutoSegLib.slices import SliceSelection, parse_slice_list

from test_cascade import _fake_bundle, _phantom_with_marker

MARKED = [6, 7, 8, 9]  # the slices _phantom_with_marker puts its bright block on
FLIPPED_Z = (1, 0, 0, 0, 1, 0, 0, 0, -1)  # stored superior first: model order is the input's reversed


def test_slice_lists_parse_and_refuse_nonsense():
    assert parse_slice_list("3, 7,10-12") == {3, 7, 10, 11, 12}
    assert parse_slice_list("") == frozenset()
    for bad in ("a", "3-1", "-2", "1.5"):
        with pytest.raises(GTVError, match="slice index or range"):
            parse_slice_list(bad)


def test_selection_rules():
    chosen = np.array([0, 1, 1, 0, 0], bool)
    assert SliceSelection.of(include=[0], exclude=[2]).apply(chosen).tolist() == [1, 1, 0, 0, 0]
    assert SliceSelection.of(only=[3]).apply(chosen).tolist() == [0, 0, 0, 1, 0]
    assert SliceSelection.of(only=[]).apply(chosen).tolist() == [0] * 5
    with pytest.raises(GTVError, match="both included and excluded"):
        SliceSelection.of(include=[1, 2], exclude=[2])
    with pytest.raises(GTVError, match="cannot be combined"):
        SliceSelection.of(include=[1], only=[2])
    with pytest.raises(GTVError, match=r"slice\(s\) 5, 9 do not exist: the CT has 5 slices \(0-4\)"):
        SliceSelection.of(include=[9, 5]).check(5)
    merged = SliceSelection.of(include=[1]).merged(SliceSelection.of(exclude=[3]))
    assert (merged.include, merged.exclude, merged.only) == ({1}, {3}, None)


def test_selection_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "slices.json"
    selection = SliceSelection.of(include=[4, 2], exclude=[9])
    path.write_text(json.dumps(selection.to_dict()))
    assert SliceSelection.from_file(path) == selection
    path.write_text(json.dumps({"only": "3-5"}))
    assert SliceSelection.from_file(path).only == {3, 4, 5}
    for content, message in (("{not json", "not JSON"), ('{"add": [1]}', "keys from"),
                             ('{"include": [1.5]}', "slice indices"), ('{"include": 3}', "list of slice")):
        path.write_text(content)
        with pytest.raises(GTVError, match=message):
            SliceSelection.from_file(path)
    with pytest.raises(GTVError, match="cannot read slice file"):
        SliceSelection.from_file(tmp_path / "absent.json")


@pytest.mark.parametrize("direction", [None, FLIPPED_Z])
def test_pipeline_applies_the_reviewer_s_slices_in_the_input_s_order(direction):
    ct, marker = _phantom_with_marker(direction)
    segmenter = Segmenter(_fake_bundle(), device="cpu")
    plain = segmenter(ct)
    assert np.flatnonzero(plain.selected).tolist() == MARKED and plain.mask.array.sum() > 0

    corrected = segmenter(ct, selection=SliceSelection.of(include=[2], exclude=[7]))
    assert np.flatnonzero(corrected.selected).tolist() == [2, 6, 8, 9]
    assert corrected.mask.array[7].sum() == 0
    np.testing.assert_array_equal(np.delete(corrected.mask.array, 7, axis=0), np.delete(plain.mask.array, 7, axis=0))

    # Slices the classifier rejects (threshold above every probability) are segmented when included.
    strict = Segmenter(_fake_bundle(), device="cpu", threshold=1.01)
    assert strict(ct).mask.array.sum() == 0
    rescued = strict(ct, selection=SliceSelection.of(include=[6, 8]))
    np.testing.assert_array_equal(rescued.mask.array[[6, 8]], plain.mask.array[[6, 8]])
    assert rescued.mask.array[[7, 9]].sum() == 0


def test_only_slices_skip_the_classifier_and_equal_a_full_run_there():
    ct, _ = _phantom_with_marker(FLIPPED_Z)
    segmenter = Segmenter(_fake_bundle(), device="cpu")
    full = segmenter(ct)
    classifier, seg_net = segmenter.cascade.classifier.net, segmenter.cascade.segmenter.net  # the torch modules
    before = classifier.calls, seg_net.calls
    only = segmenter(ct, selection=SliceSelection.of(only=[7, 9]))
    assert classifier.calls == before[0]  # the classifier did not run
    assert seg_net.calls - before[1] == 2  # the segmenter saw exactly two slices
    assert np.flatnonzero(only.selected).tolist() == [7, 9] and np.isnan(only.slice_probs).all()
    np.testing.assert_array_equal(only.mask.array[[7, 9]], full.mask.array[[7, 9]])
    assert np.delete(only.mask.array, [7, 9], axis=0).sum() == 0


@pytest.fixture
def case(tmp_path):
    ct, _ = _phantom_with_marker(FLIPPED_Z)
    path = tmp_path / "pt_3.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    model = tmp_path / "fake.pt"
    save_bundle(_fake_bundle(), model)
    return path, model


def _segment(case, out, *extra):
    path, model = case
    return main(["segment", str(path), "-o", str(out), "--model", str(model), "--device", "cpu",
                 "--progress", "none", *extra])


def test_cli_flags_and_file_reach_the_result_and_the_report(case, tmp_path, capsys):
    slice_file = tmp_path / "review.json"
    slice_file.write_text(json.dumps({"exclude": [9]}))
    assert _segment(case, tmp_path / "out", "--include-slices", "2", "--exclude-slices", "6-7",
                    "--slice-file", str(slice_file)) == 0
    report = json.loads((tmp_path / "out" / "pt_3_report.json").read_text())
    assert report["slice_selection"] == {"include": [2], "exclude": [6, 7, 9]}
    assert np.flatnonzero(report["slice_selected"]).tolist() == [2, 8]
    assert report["slices_segmented"] == 2

    assert _segment(case, tmp_path / "only", "--only-slices", "8") == 0
    report = json.loads((tmp_path / "only" / "pt_3_report.json").read_text())
    assert report["slice_selection"] == {"only": [8]} and report["slices_segmented"] == 1
    assert set(report["slice_probabilities"]) == {None}  # the classifier did not run


@pytest.mark.parametrize("extra, message", [
    (["--include-slices", "40"], r"slice\(s\) 40 do not exist: the CT has 16 slices"),
    (["--include-slices", "3", "--exclude-slices", "3"], "both included and excluded"),
    (["--only-slices", "3", "--exclude-slices", "4"], "cannot be combined"),
    (["--exclude-slices", "x"], "not a slice index"),
])
def test_cli_slice_mistakes_are_one_line_and_write_nothing(case, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert _segment(case, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gtvautoseg: error:") and len(err.splitlines()) == 1
    import re

    assert re.search(message, err), err
    assert not out.exists() or not any(out.iterdir())
