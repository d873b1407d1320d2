"""The Slicer side of GTVAutoSeg that needs MRML but not Qt (so it is tested against slicer-core).

- ``logic``: volume node -> CLI subprocess -> segmentation node, progress, log, cancel; re-segmenting
  the slices a reviewer corrected.
- ``results``: the CLI's outputs into the scene (a full run, or the corrected slices only).
- ``process``: the subprocess, read by threads, ended as a whole process tree.
- ``nodes``: MRML reading and writing (volume file, segmentation, probability table, subject hierarchy).
- ``review``: slices near the classifier threshold, and the reviewer's ticks turned into corrections.
- ``models`` / ``modelchoice``: Models.json without torch; the model selector's entries.
- ``terminology``: the radiotherapy target terminology for Slicer's selector.
- ``dicomexport``: a result as DICOM SEG / RTSTRUCT referencing the CT's series (the export button).
- ``dependencies``: torch and pip packages inside Slicer, without dialogs when headless.
- ``testing``: test bundles and the module's self-test body.
"""

from .errors import GTVAutoSegError
from .logic import (
    GTVAutoSegCancelled,
    RunStatus,
    SegmentationLogic,
    SegmentationLogicProtocol,
    SegmentationParameters,
    SegmentationRun,
)
from .review import ReviewSlice, sliceChanges

# The oldest 3D Slicer this module supports: the Extensions Index builds for main and 5.10+ (Python 3.12).
SUPPORTED_SLICER = "5.10"

__all__ = [
    "SUPPORTED_SLICER",
    "GTVAutoSegCancelled",
    "GTVAutoSegError",
    "ReviewSlice",
    "RunStatus",
    "SegmentationLogic",
    "SegmentationLogicProtocol",
    "SegmentationParameters",
    "SegmentationRun",
    "sliceChanges",
]
