"""The module's own self-test (GTVAutoSegTest inside Slicer) runs here, on slicer-core, so it cannot rot."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

pytest.importorskip("slicer", reason="slicer-core is not installed")

from GTVAutoSegSlicerLib import testing  # noqa: E402


def test_the_self_test_body_passes(tmp_path):
    scene, _keep = testing.newScene()
    steps = []
    result = testing.runSelfTest(scene, tmp_path, log=steps.append)
    assert steps[-1] == "Self-test passed" and len(steps) == 5
    corrected = testing.segmentArray(result["corrected"], result["segmentId"], result["volume"])
    assert corrected[3].any() and np.array_equal(corrected[3], result["reference"][3])


def test_the_self_test_fails_loudly(tmp_path, monkeypatch):
    """A logic that segments nothing must make the self-test fail, not pass quietly."""
    from GTVAutoSegSlicerLib import logic as logicModule

    original = logicModule.SegmentationLogic.resegmentSlices

    def resegmentNothing(self, node, include=(), exclude=(), *args, **kwargs):
        return original(self, node, [], list(include) + list(exclude), *args, **kwargs)

    monkeypatch.setattr(logicModule.SegmentationLogic, "resegmentSlices", resegmentNothing)
    scene, _keep = testing.newScene()
    with pytest.raises(testing.SelfTestFailure, match="re-segmented slices equal a full run there"):
        testing.runSelfTest(scene, tmp_path, log=lambda _text: None)


def test_the_module_test_class_runs_that_body():
    tree = ast.parse((ROOT / "GTVAutoSeg" / "GTVAutoSeg.py").read_text(encoding="utf-8"))
    test = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "GTVAutoSegTest")
    source = ast.unparse(test)
    assert "testing.runSelfTest(slicer.mrmlScene" in source
    assert "make_phantom" not in source  # the body lives in GTVAutoSegSlicerLib.testing, nowhere else
