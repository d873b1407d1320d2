"""training/comparison/experiments.py: which runs the tables need, and the Markdown tables computed from run
folders (per-patient CSVs as training.evaluate writes them)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from GTVAutoSegLib.errors import GTVError
from training.comparison import experiments
from training.config import load_config
from training.evaluate import write_rows


def test_every_table_row_has_a_config_or_is_external():
    for table in experiments.TABLES.values():
        for row in table.rows:
            config = experiments.CONFIGS / f"{row.run}.json"
            assert row.external or config.is_file(), row
            if not row.external:
                assert load_config(config).kind in ("segmenter", "segmenter3d")
            assert row.arm in ("cascade", "alone")


def test_every_classifier_of_the_bss_grid_has_a_config():
    grid = experiments.TABLES[3]
    assert len(grid.rows) == 20
    classifiers = [load_config(experiments.CONFIGS / f"{row.classifier}.json") for row in grid.rows]
    assert all(c.kind == "classifier" for c in classifiers)  # none is the shared classifier of the other tables
    assert {c.balance for c in classifiers} == {"1:1", "1:2", "1:4", "original"}
    ratios = {load_config(experiments.CONFIGS / f"{r.run}.json").balance for r in grid.rows}
    assert ratios == {"1:0", "1:1", "1:2", "1:4", "original"}


def test_runs_needed_are_unique_in_first_use_order_without_external_rows():
    tables = experiments.parse_tables("5,2")
    keys = experiments.runs_needed(tables)
    assert keys[:3] == ["sanet", "sanet_no_sam", "sanet_no_ppm"]
    assert len(keys) == len(set(keys)) and "nnunet_2d" not in keys and "vnet3d" in keys
    with pytest.raises(GTVError, match="comma list"):
        experiments.parse_tables("2,7")
    shared = experiments.Row("x", "sanet", "cascade")
    other = experiments.Row("y", "sanet", "cascade", classifier="classifier_bss_1-4")
    assert experiments.eval_folder(Path("/r"), shared) == Path("/r/sanet")
    assert experiments.eval_folder(Path("/r"), other) == Path("/r/sanet/with_classifier_bss_1-4")
    assert [t.number for t in experiments.parse_tables("table4, 6")] == [4, 6]


def _fake_run(folder: Path, dice: list[float], arm: str, **summary):
    folder.mkdir(parents=True)
    rows = [{"patient": f"pt_{i}", "arm": arm, "dice": d, "jaccard": d / (2 - d), "hd95_mm": 10.0 * (i + 1),
             "fp_slices": i, "fn_slices": 0, "ref_slices": 5, "volume_pred_cc": 1.0, "volume_ref_cc": 1.0,
             "classifier_recall": 0.9 if arm == "cascade" else float("nan"), "classifier_fp_slices": 1,
             "seconds": 2.0} for i, d in enumerate(dice)]
    (folder / "eval").mkdir()
    write_rows(rows, folder / "eval" / "per_patient.csv")
    (folder / "summary.json").write_text(json.dumps({"wall_seconds": 600.0, "stop_reason": "time_budget",
                                                     "slices_seen": 12345, "git_commit": "abcdef1234567890",
                                                     "config": {"time_budget_min": 10}, **summary}))
    (folder / "pipeline.json").write_text(json.dumps({"params": 1_500_000, "steps": [
        {"step": "evaluate", "device": "cpu", "threads": 1}]}))


def test_report_computes_each_row_from_its_run_and_marks_missing_rows(tmp_path):
    runs = tmp_path / "runs"
    _fake_run(runs / "sanet", [0.5, 0.7], "cascade")
    # a run whose evaluation has both arms: the table picks the row's arm
    _fake_run(runs / "sanet_no_sam", [0.2, 0.4], "cascade")
    paths = experiments.report([experiments.TABLES[5]], "python -m training.comparison.experiments run --budget-min 10",
                               "Budget: test.", tmp_path / "results", runs)
    text = paths[0].read_text()
    assert "# Table 5: Ablation" in text and "run --budget-min 10" in text and "Budget: test." in text
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    full = lines["HCF (SANet with SAM and PPM)"]
    assert "| 1.50 | 0.600 ± 0.100 | 0.600 | 15.0 ± 5.0 |" in full  # params, Dice, median, HD95
    assert "| 0.50 | 0.900 | 10.0 of 10 (time_budget), 12,345 slices | 2.00 | not measured | abcdef123456 |" in full
    assert "| 0.300 ± 0.100 |" in lines["without SAM (bilinear upsampling in the decoder)"]
    assert "not run" in lines["without PPM (no pyramid pooling bridge)"]
    # SANet alone: the run exists but its evaluation has no "alone" rows
    assert "not run" in lines["without HCF (SANet alone on every slice)"]
    assert "Not run yet:" in text and "`sanet_no_ppm`" in text
    assert np.isclose(np.std([0.5, 0.7]), 0.1)


def test_budget_note_names_the_classifier_budget_when_the_run_recorded_it():
    state = {"budget_min": 10, "device": "cpu", "threads": 1, "jobs": 2, "max_slices_per_epoch": 1024,
             "classifier": str(experiments.ROOT / "training" / "runs" / "classifier" / "best.pt")}
    note = experiments._budget_note(state)
    assert "at most 10 min" in note and "training/runs/classifier/best.pt" in note and "Table 3" not in note
    assert "(Table 3) at most 7.5 min each" in experiments._budget_note({**state, "classifier_budget_min": 7.5})
