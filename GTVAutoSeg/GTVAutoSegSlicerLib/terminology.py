"""The radiotherapy target terminology for 3D Slicer's terminology selector, from the library's codes.

``GTVAutoSegLib.segfile`` is the one home of the codes the segments carry; this writes them as a
Slicer terminology context file and loads it, so the selector resolves every segment we make
(Slicer's own lists hold no radiotherapy targets). No Qt.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from GTVAutoSegLib.segfile import TERMINOLOGY_CONTEXT, Terminology, target_color, terminology_context_json

FILE_NAME = "GTVAutoSeg-RadiotherapyTargets.term.json"


def registerTerminology(terminologiesLogic, folder: str | Path | None = None) -> str:
    """Load the context into a ``vtkSlicerTerminologiesModuleLogic``; returns its name.

    Args:
        folder: where the ``.term.json`` is written (a temporary folder by default; Slicer reads it at once).
    """
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="GTVAutoSeg-terminology-") as tmp:
            return registerTerminology(terminologiesLogic, tmp)
    path = Path(folder) / FILE_NAME
    path.write_text(json.dumps(terminology_context_json(), indent=2), encoding="utf-8")
    name = terminologiesLogic.LoadTerminologyFromFile(str(path))
    if name != TERMINOLOGY_CONTEXT:
        raise RuntimeError(f"Slicer did not load the terminology context {TERMINOLOGY_CONTEXT!r} (got {name!r})")
    return name


def segmentTerminology(target: str, region: str | None = None) -> str:
    """Slicer's terminology entry string for a target (``"PTV70"``...), for a segment that has none."""
    return Terminology.for_target(target, region).entry_string()


def segmentColor(target: str) -> tuple[float, float, float]:
    return target_color(target)
