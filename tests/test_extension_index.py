"""The Extensions Index checklist (scripts/check_extension.py) on this repository, and on copies
broken one way at a time to show that each check can fail; plus the supported Python versions."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))
spec = importlib.util.spec_from_file_location("check_extension", ROOT / "scripts" / "check_extension.py")
check_extension = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_extension)


def test_this_repository_passes_every_check(capsys):
    assert check_extension.run(ROOT) == {name: [] for name in check_extension.CHECKS}
    assert check_extension.main([str(ROOT)]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.fixture
def copy(tmp_path) -> Path:
    """The files the checks read, copied so that one can be broken."""
    for name in ("CMakeLists.txt", "LICENSE.txt", "README.md", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("ExtensionsIndex", "Screenshots", "GTVAutoSeg"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def _set(copy: Path, key: str, value: str) -> None:
    text = (copy / "CMakeLists.txt").read_text(encoding="utf-8")
    text = re.sub(rf'set\({key} "[^"]*"\)', f'set({key} "{value}")', text)
    (copy / "CMakeLists.txt").write_text(text, encoding="utf-8")


def _entry(copy: Path, **changes) -> None:
    path = copy / "ExtensionsIndex" / "GTVAutoSeg.json"
    entry = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    path.write_text(json.dumps(entry))


BREAKS = {
    "licence": [(lambda c: (c / "LICENSE.txt").unlink(), "no licence file"),
                (lambda c: (c / "LICENSE.txt").write_text("MIT License"), "not the Apache License")],
    "entry": [(lambda c: _entry(c, scm_url=None), "required key 'scm_url'"),
              (lambda c: _entry(c, homepage="https://example.org"), "'homepage' is not in the catalog-entry schema"),
              (lambda c: _entry(c, scm_url="https://github.com/GTVAutoSeg/GTVAutoSeg"), "Slicer\\+ExtensionName"),
              (lambda c: _entry(c, scm_revision="0" * 40), "branch name")],
    "cmake": [(lambda c: _edit(c / "CMakeLists.txt", "project(GTVAutoSeg)", "project(AutoSeg)"), "not the entry's name")],
    "urls": [(lambda c: (c / "Screenshots" / "GTVAutoSeg-1.png").unlink(), "not in the repository"),
             (lambda c: _set(c, "EXTENSION_ICONURL", "https://example.org/icon.png"), "is not a raw file of"),
             (lambda c: (c / "Screenshots" / "GTVAutoSeg-1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(400_000)),
              "keep it under")],
    "description": [(lambda c: _set(c, "EXTENSION_DESCRIPTION", "One. Two. Three."), "3 sentences"),
                    (lambda c: _set(c, "EXTENSION_DESCRIPTION", "x" * 400 + "."), "401 characters")],
    "contributors": [(lambda c: _set(c, "EXTENSION_CONTRIBUTORS", "Jane Doe, John Roe (Somewhere)"),
                      "'Jane Doe' is not written as 'Name \\(Affiliation\\)'")],
    "category": [(lambda c: _set(c, "EXTENSION_CATEGORY", "Tumours"), "'Tumours' is not one the index accepts")],
    "dependencies": [(lambda c: _set(c, "EXTENSION_DEPENDS", "NA"), "imports PyTorchUtils but does not declare"),
                     (lambda c: (_set(c, "EXTENSION_DEPENDS", "PyTorch SlicerElastix"),
                                 _entry(c, build_dependencies=["PyTorch", "SlicerElastix"])),
                      "'SlicerElastix' is not an extension this script knows")],
}


@pytest.mark.parametrize("check, index", [(c, i) for c, cases in BREAKS.items() for i in range(len(cases))])
def test_each_check_fails_on_what_it_checks(copy, check, index):
    breakIt, message = BREAKS[check][index]
    assert check_extension.run(copy)[check] == []
    breakIt(copy)
    problems = check_extension.run(copy)[check]
    assert any(re.search(message, p) for p in problems), problems


def test_the_module_and_library_run_on_the_supported_pythons(tmp_path):
    """Slicer 5.10+ runs Python 3.12 and this project's machines 3.11: nothing newer than 3.11 may be
    needed (vermin), and pyproject.toml says so."""
    vermin = [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())"]
    args = ["--no-tips", "--violations", "--eval-annotations", "-t=3.11-"]
    proc = subprocess.run([*vermin, *args, "GTVAutoSeg", "GTVAutoSegLib", "scripts"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "new.py").write_text("type Alias = int\n")  # 3.12 syntax: the check must refuse it
    refused = subprocess.run([*vermin, *args, str(tmp_path / "new.py")], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "3.12" in refused.stdout
    assert 'requires-python = ">=3.11"' in (ROOT / "pyproject.toml").read_text()
    from GTVAutoSegSlicerLib import SUPPORTED_SLICER

    assert SUPPORTED_SLICER == "5.10" and "3D Slicer 5.10 and later" in (ROOT / "README.md").read_text()
