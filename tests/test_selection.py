"""training.selection: the model-selection table from per-patient evaluations (no network runs here)."""

from __future__ import annotations

import json

import pytest

from GTVAutoSegLib.errors import GTVError
from training import selection
from training.evaluate import write_rows


def _rows(dices, fps):
    return [{"patient": f"pt_{i}", "arm": "cascade", "dice": d, "jaccard": d / (2 - d), "hd95_mm": 10.0,
             "fp_slices": f, "fn_slices": 0, "ref_slices": 30, "volume_pred_cc": 100.0, "volume_ref_cc": 100.0,
             "classifier_recall": 1.0, "classifier_fp_slices": f, "seconds": 1.5} for i, (d, f) in enumerate(zip(dices, fps))]


def test_report_puts_every_variant_against_the_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "RUNS", tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "better").mkdir()
    write_rows(_rows([0.4, 0.5, 0.6, 0.5], [10, 12, 0, 1]), tmp_path / "ref" / "per_patient.csv")
    write_rows(_rows([0.5, 0.6, 0.7, 0.6], [1, 2, 0, 1]), tmp_path / "better" / "per_patient.csv")
    variants_file = tmp_path / "v.json"
    variants_file.write_text(json.dumps({"reference": "ref", "variants": [
        {"key": "ref", "label": "shipped", "bundle": "hcf-openkbp-ptv70", "train_minutes": 70},
        {"key": "better", "label": "new", "bundle": "x.pt", "combine": ["tta_flip=true"], "commands": ["train it"]},
        {"key": "later", "label": "not yet", "bundle": "y.pt"},
    ]}))
    reference, variants = selection.load_variants(variants_file)
    text = selection.report(reference, variants, "v.json")
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    assert "| 0.500 | 0.500 |" in lines["| `ref` shipped"] and "| 2 of 4 (50%) |" in lines["| `ref` shipped"]
    assert "+0.100 [+0.100, +0.100]" in lines["| `better` new"]  # every patient exactly 0.1 better
    assert "| 3 of 4 (75%) |" in lines["| `better` new"] and "| 1.50 |" in lines["| `better` new"]
    assert "not run" in lines["| `later` not yet"]
    assert "| 70 |" in lines["| `ref` shipped"] and "  - `train it`" in text and "combine `tta_flip=true`" in text


def test_a_missing_reference_or_a_duplicate_key_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(selection, "RUNS", tmp_path)
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"reference": "a", "variants": [{"key": "a", "label": "", "bundle": "x"},
                                                               {"key": "a", "label": "", "bundle": "y"}]}))
    with pytest.raises(GTVError, match="unique"):
        selection.load_variants(path)
    path.write_text(json.dumps({"reference": "a", "variants": [{"key": "a", "label": "", "bundle": "x"}]}))
    with pytest.raises(GTVError, match="has not been evaluated"):
        selection.report(*selection.load_variants(path), "v.json")
