"""Every row of benchmarks/bad_inputs.json, run in process: the exit status and the one line it
promises, no output for a refusal, an output exactly on the input's grid for an accepted odd input,
and inputs unchanged (SHA-256). The README prints the same table."""

import hashlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bad_input_cases  # noqa: E402
from bad_input_sweep import markdown_table  # noqa: E402

from GTVAutoSegLib.bundle import save_bundle  # noqa: E402
from GTVAutoSegLib.cli import main  # noqa: E402
from GTVAutoSegLib.io import read_image  # noqa: E402

from test_cascade import _fake_bundle  # noqa: E402

ROWS = bad_input_cases.table()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "fake.pt"
    save_bundle(_fake_bundle(), path)
    return path


def _sha(paths):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_case(row, model, tmp_path, capsys, request):
    shared = request.getfixturevalue("shared_data") if row.get("needs") == "shared_data" else None
    case = bad_input_cases.build(row["id"], tmp_path / "case", model, shared)
    before = _sha(case.inputs)
    rc = main(case.argv)
    err = capsys.readouterr().err.strip()
    assert rc == row["exit"], err
    assert _sha(case.inputs) == before  # inputs never modified
    leftovers = [p for p in (tmp_path / "case").rglob("*") if ".tmp-" in p.name or ".gtvautoseg-probe" in p.name]
    assert leftovers == []
    if row["exit"] == 2:
        assert len(err.splitlines()) == 1 and err.startswith("gtvautoseg: error:"), err
        assert row["message"].lower() in err.lower(), err
        if row.get("command", "segment") == "segment" and case.out.is_dir() and case.out.name == "out":
            assert list(case.out.iterdir()) == []
    else:
        ct = read_image(case.reference_input)
        for name in ("seg.nrrd", "label.nii.gz"):
            found = [p for p in case.out.iterdir() if p.name.endswith(name)]
            assert len(found) == 1 and read_image(found[0]).same_grid(ct)


def test_the_readme_prints_the_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README is out of date: python benchmarks/bad_input_sweep.py --table"
