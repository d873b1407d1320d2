"""The scene side of the web app: one CT, one run of the module logic, its review list, the
reviewer's edits and the saved files. No trame here, so the page's callbacks stay thin.

The scene, the views and the Segment Editor are trame-slicer's (``SlicerApp``); segmentation,
cancelling, the review list and slice re-segmentation are the Slicer module's own
``SegmentationLogic``, unchanged, polled by the caller (from asyncio instead of a QTimer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from GTVAutoSegSlicerLib import GTVAutoSegError, SegmentationLogic, SegmentationParameters, sliceChanges
from GTVAutoSegSlicerLib.nodes import SEGMENT_ID_ATTRIBUTE, probabilityTableFor, segmentArray, sliceCentresRas
from GTVAutoSegSlicerLib.results import TARGET_ATTRIBUTE
from GTVAutoSegSlicerLib.review import ReviewSlice
from slicer import vtkMRMLSliceNode
from trame_slicer.segmentation import (
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectNoTool,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
)
from undo_stack import UndoStack

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.image import Image

from .inputs import LoadedCT

# CT window presets (width, level) in HU, as the slice views offer them.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "Soft tissue": (400.0, 40.0),
    "Head and neck": (350.0, 60.0),
    "Lung": (1500.0, -600.0),
    "Bone": (1800.0, 400.0),
    "Brain": (80.0, 40.0),
}
DEFAULT_PRESET = "Soft tissue"
# The Segment Editor effects the page offers, by the name the page uses.
EFFECTS = {
    "none": SegmentationEffectNoTool,
    "paint": SegmentationEffectPaint,
    "erase": SegmentationEffectErase,
    "scissors": SegmentationEffectScissors,
}
UNDO_LIMIT = 20


@dataclass
class SegmentSummary:
    """What the page shows of the target segment."""

    name: str
    voxels: int
    cc: float

    def text(self) -> str:
        return f"{self.name}: {self.voxels:,} voxels, {self.cc:.2f} cc"


def volumeNodeFromImage(scene, image: Image, name: str):
    """A scalar volume node holding ``image`` with its own voxel order and geometry.

    Built directly rather than through Slicer's file reader, which may store the slices in the
    opposite order (an OpenKBP CT, slice direction -z, comes back with K = 127 - k): here the node's
    K is the file's slice index, so the review list, ``--include-slices`` and the saved files all
    count slices as ``gtvautoseg segment`` does.
    """
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    array = np.ascontiguousarray(image.array)
    data = vtk.vtkImageData()
    data.SetDimensions(*array.shape[::-1])
    data.GetPointData().SetScalars(numpy_to_vtk(array.ravel(), deep=True))
    lpsToRas = np.diag([-1.0, -1.0, 1.0])
    direction = np.array(image.direction, float).reshape(3, 3)
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = lpsToRas @ direction @ np.diag(image.spacing)
    ijkToRas[:3, 3] = lpsToRas @ np.array(image.origin, float)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, ijkToRas[r, c])
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    volume.SetAndObserveImageData(data)
    volume.SetIJKToRASMatrix(matrix)
    return volume


class Session:
    """One user's CT and result on a trame-slicer ``SlicerApp``.

    Args:
        slicerApp: the trame-slicer application (scene, views, Segment Editor).
        logic: the module logic; by default a ``SegmentationLogic`` on the app's scene.
    """

    def __init__(self, slicerApp, logic: SegmentationLogic | None = None):
        self.app = slicerApp
        self.scene = slicerApp.scene
        self.logic = logic or SegmentationLogic(self.scene)
        self.editor = slicerApp.segmentation_editor
        self.undoStack = UndoStack(undo_limit=UNDO_LIMIT)
        self.editor.set_undo_stack(self.undoStack)
        self.ct: LoadedCT | None = None
        self.volume = None
        self.segmentation = None
        self.report: dict = {}  # the CLI's report of the run that made the segmentation
        self.review: list[ReviewSlice] = []
        self.ticks: dict[int, bool] = {}
        self.preset = DEFAULT_PRESET

    # ------------------------------------------------------------------------------ the CT

    def showCt(self, loaded: LoadedCT) -> None:
        """Replace the scene's CT (and any result on it) by ``loaded`` and show it in every view."""
        self._checkIdle()
        volume = volumeNodeFromImage(self.scene, loaded.image, loaded.name)
        self._removeResult()
        if self.volume is not None:
            self.scene.RemoveNode(self.volume)
        self.ct, self.volume = loaded, volume
        volume.CreateDefaultDisplayNodes()
        self.setWindowPreset(self.preset)
        self.app.display_manager.show_volume_in_slice_background(volume)
        self.app.display_manager.show_volume_in_slice_foreground(None)
        for view in self.app.view_manager.get_slice_views():
            view.set_visible_in_3d(view.get_orientation() == "Axial")
        self.app.display_manager.reset_views()

    def setWindowPreset(self, name: str) -> None:
        if name not in WINDOW_PRESETS:
            raise GTVError(f"unknown window preset {name!r}")
        self.preset = name
        if self.volume is None:
            return
        width, level = WINDOW_PRESETS[name]
        display = self.volume.GetDisplayNode()
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(width, level)

    def axialSlice(self) -> int | None:
        """The K index of the CT slice the axial view shows (None without a CT)."""
        if self.volume is None:
            return None
        for view in self.app.view_manager.get_slice_views():
            if view.get_orientation() == "Axial":
                sliceToRas = view.get_view_node().GetSliceToRAS()
                ras = [sliceToRas.GetElement(i, 3) for i in range(3)]
                return self._rasToK(ras)
        return None

    def _rasToK(self, ras) -> int:
        import vtk

        rasToIjk = vtk.vtkMatrix4x4()
        self.volume.GetRASToIJKMatrix(rasToIjk)
        k = rasToIjk.MultiplyPoint((*ras, 1.0))[2]
        return int(round(k))

    def jumpToSlice(self, k: int) -> None:
        """Move the slice views to the centre of CT slice ``k`` (a review list click)."""
        centres = sliceCentresRas(self.volume)
        if not 0 <= k < len(centres):
            raise GTVError(f"slice {k} is outside the CT (0-{len(centres) - 1})")
        vtkMRMLSliceNode.JumpAllSlices(self.scene, *centres[k], vtkMRMLSliceNode.OffsetJumpSlice)

    # ------------------------------------------------------------------------------ running

    def _checkIdle(self) -> None:
        if self.logic.isRunning():
            raise GTVError("a segmentation is running; cancel it or wait for it to finish")

    def start(self, parameters: SegmentationParameters, onProgress, onFinished, onLog):
        """Start the module logic on the CT; the caller polls :meth:`poll` until it returns False."""
        if self.volume is None:
            raise GTVError("load a CT first")
        self.editor.deactivate_effect()
        try:
            return self.logic.process(self.volume, None, parameters, waitForCompletion=False, onProgress=onProgress,
                                      onFinished=onFinished, onLog=onLog)
        except GTVAutoSegError as exc:
            raise GTVError(str(exc)) from None

    def resegment(self, parameters: SegmentationParameters, onProgress, onFinished, onLog):
        """"Re-segment selected slices": run the segmenter on newly ticked slices, empty unticked ones."""
        if self.segmentation is None:
            raise GTVError("segment the CT first")
        include, exclude = sliceChanges(self.review, self.ticks)
        if not include and not exclude:
            raise GTVError("tick or untick slices in the review list first")
        self.editor.deactivate_effect()
        try:
            return self.logic.resegmentSlices(self.segmentation, include, exclude, parameters, waitForCompletion=False,
                                              onProgress=onProgress, onFinished=onFinished, onLog=onLog)
        except GTVAutoSegError as exc:
            raise GTVError(str(exc)) from None

    def poll(self) -> bool:
        return self.logic.poll()

    def cancel(self) -> None:
        self.logic.cancel()

    def isRunning(self) -> bool:
        return self.logic.isRunning()

    def adopt(self, run, margin: float) -> None:
        """A finished run's segmentation becomes the one the editor works on (a re-segmentation
        keeps it and refreshes the review list)."""
        if run.segmentationNode is None or run.segmentationNode is self.segmentation:
            self.refreshReview(margin)
            self.undoStack.clear()  # the re-segmented slices were changed outside the editor's history
            return
        if self.segmentation is not None and self.segmentation is not run.segmentationNode:
            self._removeResult()
        self.segmentation = run.segmentationNode
        if run.report:
            self.report = run.report
        self.editor.set_active_segmentation(self.segmentation, self.volume)
        segmentId = self.segmentation.GetAttribute(SEGMENT_ID_ATTRIBUTE)
        if segmentId:
            self.editor.set_active_segment_id(segmentId)
        self.editor.show_3d(True)
        self.refreshReview(margin)

    def refreshReview(self, margin: float) -> None:
        self.review = self.logic.reviewList(self.segmentation, margin) if self.segmentation is not None else []
        self.ticks = {item.sliceIndex: item.selected for item in self.review}

    def _removeResult(self) -> None:
        if self.segmentation is None:
            return
        self.editor.deactivate_effect()
        table = probabilityTableFor(self.segmentation)
        if table is not None:
            self.scene.RemoveNode(table)
        self.scene.RemoveNode(self.segmentation)
        self.segmentation, self.report, self.review, self.ticks = None, {}, [], {}
        self.undoStack.clear()

    # ------------------------------------------------------------------------------ the result

    def segmentId(self) -> str | None:
        return self.segmentation.GetAttribute(SEGMENT_ID_ATTRIBUTE) if self.segmentation is not None else None

    def mask(self) -> np.ndarray:
        """The target segment on the CT's grid, ``(k, j, i)`` uint8 0/1."""
        if self.segmentation is None:
            raise GTVError("segment the CT first")
        try:
            return segmentArray(self.segmentation, self.segmentId(), self.volume)
        except GTVAutoSegError as exc:
            raise GTVError(str(exc)) from None

    def largestSlice(self) -> int | None:
        """The K index of the slice holding most of the target (None when it is empty)."""
        perSlice = self.mask().sum(axis=(1, 2))
        return int(perSlice.argmax()) if perSlice.any() else None

    def summary(self) -> SegmentSummary | None:
        if self.segmentation is None or self.ct is None:
            return None
        voxels = int(self.mask().sum())
        spacing = self.ct.image.spacing
        name = self.segmentation.GetSegmentation().GetSegment(self.segmentId()).GetName()
        return SegmentSummary(name, voxels, voxels * float(np.prod(spacing)) / 1000.0)

    # ------------------------------------------------------------------------------ editing

    def setEffect(self, name: str, brushPercent: float | None = None) -> None:
        """Activate a Segment Editor effect on the target segment (``none`` ends editing)."""
        if name not in EFFECTS:
            raise GTVError(f"unknown effect {name!r}")
        if name != "none" and self.segmentation is None:
            raise GTVError("segment the CT first")
        effect = self.editor.set_active_effect_type(EFFECTS[name])
        if brushPercent is not None and hasattr(effect, "set_brush_diameter"):
            effect.set_brush_diameter(float(brushPercent))

    def keepLargestIsland(self) -> None:
        """The Islands effect's "keep largest island" on the target segment (one undo step)."""
        if self.segmentation is None:
            raise GTVError("segment the CT first")
        effect = self.editor.set_active_effect_type(SegmentationEffectIslands)
        effect.apply()
        self.editor.deactivate_effect()

    def undo(self) -> None:
        if self.undoStack.can_undo():
            self.undoStack.undo()

    def redo(self) -> None:
        if self.undoStack.can_redo():
            self.undoStack.redo()

    # ------------------------------------------------------------------------------ saving

    def save(self, folder: Path) -> tuple[list[Path], str | None]:
        """Write ``<case>.seg.nrrd`` and ``<case>_label.nii.gz`` of the target (edits included) on
        the CT's exact grid, with the writers ``gtvautoseg segment`` uses; for a CT read from a DICOM
        series also ``<case>_seg.dcm`` (DICOM SEG) and ``<case>_rtstruct.dcm`` (RTSTRUCT) referencing
        that series. All files appear or none.

        Returns:
            The files written, and why no DICOM SEG/RTSTRUCT was written for a DICOM series that
            cannot be referenced (e.g. de-identified without its UIDs), else None.
        """
        from GTVAutoSegLib import io
        from GTVAutoSegLib.dicomrt import ResultDescription, check_source, on_series_grid
        from GTVAutoSegLib.dicomwriters import write_dicom
        from GTVAutoSegLib.outputs import DICOM_FORMATS, OUTPUT_FORMATS, atomic_outputs, check_case_name, prepare_output_dir
        from GTVAutoSegLib.segfile import Terminology, target_color, write_seg_nrrd

        if self.segmentation is None or self.ct is None:
            raise GTVError("segment the CT first")
        folder = prepare_output_dir(folder)
        name = check_case_name(self.ct.name)
        mask = self.ct.image.with_array(self.mask())
        segment = self.segmentation.GetSegmentation().GetSegment(self.segmentId())
        target = self.segmentation.GetAttribute(TARGET_ATTRIBUTE) or segment.GetName()
        model = self.report.get("model", {})
        region = model.get("anatomic_region") or None
        formats, why = ["nrrd", "nifti"], None
        if self.ct.image.source is not None:
            try:
                check_source(self.ct.image.source, f"the CT {self.ct.name}")
                formats += DICOM_FORMATS
            except GTVError as exc:
                why = f"no DICOM SEG/RTSTRUCT: {exc}"
        paths = [folder / f"{name}{OUTPUT_FORMATS[fmt]}" for fmt in formats]
        with atomic_outputs(paths) as tmps:
            tmp = dict(zip(formats, tmps))
            write_seg_nrrd(mask, tmp["nrrd"], name=segment.GetName(), color=target_color(target),
                           terminology=Terminology.for_target(target, region))
            io.write_labelmap(mask, tmp["nifti"])
            if len(formats) > 2:
                description = ResultDescription(target, model.get("name") or "GTVAutoSeg",
                                                str(model.get("version") or "unknown"), region)
                onSeries = on_series_grid(mask, self.ct.image, f"the segment of {self.ct.name}")
                for fmt in DICOM_FORMATS:
                    write_dicom(fmt, onSeries, tmp[fmt], description)
        return paths, why

    def close(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
