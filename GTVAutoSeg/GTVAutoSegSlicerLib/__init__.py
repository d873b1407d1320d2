"""The Slicer side of GTVAutoSeg that needs MRML but not Qt (so it is tested against slicer-core).

- ``logic``: volume node -> CLI subprocess -> segmentation node, progress, cancel.
- ``process``: the subprocess, read by threads, ended as a whole process tree.
- ``nodes``: MRML reading and writing (volume file, segmentation, probability table).
- ``review``: slices near the classifier threshold.
- ``models``: Models.json without torch.
- ``dependencies``: torch and pip packages inside Slicer, without dialogs when headless.
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
from .review import ReviewSlice

__all__ = [
    "GTVAutoSegCancelled",
    "GTVAutoSegError",
    "ReviewSlice",
    "RunStatus",
    "SegmentationLogic",
    "SegmentationLogicProtocol",
    "SegmentationParameters",
    "SegmentationRun",
]
