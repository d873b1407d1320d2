"""Manual correction as a user does it, with Slicer's own segment editor logic on real MRML.

The run's GTV is edited with ``vtkSlicerSegmentEditorLogic`` the way the Segment Editor effects do
it: each edit saves an undo state, fills the modifier labelmap (Paint: a sphere brush rasterised
from polygons; Erase: a box; Islands: ``vtkITKIslandMath``) and applies it to the segment. The
expected voxels of every step are computed independently in numpy from the voxel centres' RAS
positions, and the saved ``.seg.nrrd`` is read back twice: through MRML and through slicerio.

The model is the "background" test bundle (the segmenter finds nothing): the reviewer draws the
tumour the model missed. Sphere radii are put in the middle of a gap between voxel-centre
distances, so the polygonal brush and the ideal sphere hold exactly the same voxels.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")
from vtk.util.numpy_support import vtk_to_numpy  # noqa: E402

from GTVAutoSegSlicerLib import SegmentationLogic, SegmentationParameters  # noqa: E402
from GTVAutoSegSlicerLib import testing  # noqa: E402
from GTVAutoSegSlicerLib.nodes import loadVolume  # noqa: E402

ISLAND_MINIMUM_SIZE = 20  # voxels; the stray click below holds 5


class Editor:
    """The Segment Editor's effects, reduced to what they do to the segmentation."""

    def __init__(self, scene, segmentationNode, segmentId, volumeNode):
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.editorNode = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.logic.SetSegmentEditorNode(self.editorNode)
        self.logic.SetSegmentationNode(segmentationNode)
        self.logic.SetSourceVolumeNode(volumeNode)
        self.logic.SetCurrentSegmentID(segmentId)
        self.segmentationNode, self.segmentId = segmentationNode, segmentId

    def _modifier(self):
        assert self.logic.ResetModifierLabelmapToDefault()
        modifier = self.logic.GetModifierLabelmap()
        modifierArray(modifier)[:] = 0
        return modifier

    def _apply(self, modifier, mode):
        modifier.Modified()
        self.logic.ModifySegmentByLabelmap(self.segmentationNode, self.segmentId, modifier, mode, True, False)

    def paintSphere(self, centreRas, radius: float):
        """Paint effect, sphere brush: a polygonal sphere in RAS rasterised into the modifier."""
        assert self.logic.SaveStateForUndo()
        modifier = self._modifier()
        sphere = vtk.vtkSphereSource()
        sphere.SetCenter(*centreRas)
        sphere.SetRadius(radius)
        sphere.SetThetaResolution(96)
        sphere.SetPhiResolution(96)
        imageToWorld = vtk.vtkMatrix4x4()
        modifier.GetImageToWorldMatrix(imageToWorld)
        worldToImage = vtk.vtkTransform()
        worldToImage.SetMatrix(imageToWorld)
        worldToImage.Inverse()
        toIjk = vtk.vtkTransformPolyDataFilter()
        toIjk.SetTransform(worldToImage)
        toIjk.SetInputConnection(sphere.GetOutputPort())
        stencil = vtk.vtkPolyDataToImageStencil()
        stencil.SetInputConnection(toIjk.GetOutputPort())
        stencil.SetOutputOrigin(0, 0, 0)
        stencil.SetOutputSpacing(1, 1, 1)
        stencil.SetOutputWholeExtent(modifier.GetExtent())
        toImage = vtk.vtkImageStencilToImage()
        toImage.SetInputConnection(stencil.GetOutputPort())
        toImage.SetInsideValue(1)
        toImage.SetOutsideValue(0)
        toImage.SetOutputScalarTypeToUnsignedChar()
        toImage.Update()
        modifierArray(modifier)[:] = testing.imageArray(toImage.GetOutput())
        self._apply(modifier, self.logic.ModificationModeAdd)

    def eraseBox(self, kRange, jRange, iRange):
        """Erase effect over a box of voxels (half-open index ranges)."""
        assert self.logic.SaveStateForUndo()
        modifier = self._modifier()
        modifierArray(modifier)[slice(*kRange), slice(*jRange), slice(*iRange)] = 1
        self._apply(modifier, self.logic.ModificationModeRemove)

    def removeSmallIslands(self, minimumSize: int):
        """Islands effect, "Remove small islands" (face connectivity, as the effect's default)."""
        assert self.logic.SaveStateForUndo()
        assert self.logic.UpdateSelectedSegmentLabelmap()
        labelmap = self.logic.GetSelectedSegmentLabelmap()
        binary = vtk.vtkImageThreshold()
        binary.SetInputData(labelmap)
        binary.ThresholdByUpper(1)
        binary.SetInValue(1)
        binary.SetOutValue(0)
        binary.SetOutputScalarTypeToUnsignedChar()
        islands = slicer.vtkITKIslandMath()
        islands.SetInputConnection(binary.GetOutputPort())
        islands.SetFullyConnected(False)
        islands.SetMinimumSize(minimumSize)
        islands.Update()
        modifier = self._modifier()
        kept = testing.imageArray(islands.GetOutput()) > 0
        target = modifierArray(modifier)
        assert kept.shape == target.shape
        target[:] = kept
        self._apply(modifier, self.logic.ModificationModeSet)

    def undo(self):
        self.logic.Undo()


def modifierArray(image) -> np.ndarray:
    """A writable ``(k, j, i)`` view of an oriented image's voxels."""
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])


def voxelCentresRas(volumeNode) -> np.ndarray:
    """``(k, j, i, 3)`` RAS position of every voxel centre."""
    ni, nj, nk = volumeNode.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(float)
    return (ijk1 @ testing.ijkToRasArray(volumeNode).T)[..., :3]


def radiusInGap(distances: np.ndarray, target: float, minimumGap: float = 0.2) -> float:
    """A radius near ``target`` halfway between two consecutive voxel distances at least
    ``minimumGap`` mm apart, so that no voxel centre lies near the sphere's surface."""
    values = np.unique(np.round(distances, 6))
    for lo, hi in zip(values[:-1], values[1:]):
        if hi > target and hi - lo >= minimumGap:
            return float((lo + hi) / 2)
    raise AssertionError("no gap in the voxel distances")


@pytest.fixture(scope="module")
def backgroundBundle(tmp_path_factory) -> Path:
    return testing.makeBundle(tmp_path_factory.mktemp("bundles") / "bg.pt", "background")


def test_paint_erase_islands_undo_then_save(backgroundBundle, tmp_path):
    from GTVAutoSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=(10, 48, 48), spacing=(1.6, 1.6, 2.5), seed=2, tumour_slices=3)
    path = tmp_path / "phantom.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, path)
    run = SegmentationLogic(scene).process(volume, parameters=SegmentationParameters(
        model=str(backgroundBundle), device="cpu", createSurface=False))
    seg = run.segmentationNode
    segmentId = seg.GetSegmentation().GetNthSegmentID(0)
    state = testing.segmentArray(seg, segmentId, volume).astype(bool)
    assert not state.any()  # the model found nothing

    ras = voxelCentresRas(volume)
    editor = Editor(scene, seg, segmentId, volume)
    current = lambda: testing.segmentArray(seg, segmentId, volume).astype(bool)  # noqa: E731

    # 1. Paint the tumour: a sphere of about 6 mm around a voxel centre in the middle.
    centre1 = ras[5, 24, 24]
    d1 = np.linalg.norm(ras - centre1, axis=-1)
    radius1 = radiusInGap(d1, 6.0)
    # ... and a stray click elsewhere: the centre voxel and its in-plane face neighbours.
    centre2 = ras[2, 8, 8]
    d2 = np.linalg.norm(ras - centre2, axis=-1)
    radius2 = radiusInGap(d2, 1.7)
    editor.paintSphere(centre1, radius1)
    editor.paintSphere(centre2, radius2)
    state = state | (d1 <= radius1) | (d2 <= radius2)
    straySize = int((d2 <= radius2).sum())
    assert 1 < straySize < ISLAND_MINIMUM_SIZE
    np.testing.assert_array_equal(current(), state)

    # 2. Erase the part of the tumour sphere on the high-i side of its centre (i >= 26).
    editor.eraseBox((0, 10), (0, 48), (26, 48))
    state[:, :, 26:] = False
    np.testing.assert_array_equal(current(), state)
    assert state[:, :, 26:].sum() == 0 and (d1 <= radius1)[:, :, 26:].any()  # the erase removed something

    # 3. Remove small islands: the stray click goes, the tumour stays.
    labels, n = ndimage.label(state)  # face connectivity, as the effect
    sizes = np.bincount(labels.ravel())[1:]
    assert n == 2 and sorted(sizes)[0] == straySize and sorted(sizes)[1] >= ISLAND_MINIMUM_SIZE
    editor.removeSmallIslands(ISLAND_MINIMUM_SIZE)
    state = np.isin(labels, np.flatnonzero(sizes >= ISLAND_MINIMUM_SIZE) + 1)
    np.testing.assert_array_equal(current(), state)
    afterEdits = state.copy()

    # 4. A slip of the brush, undone once.
    editor.paintSphere(ras[8, 40, 12], 4.0)
    assert current().sum() > afterEdits.sum()
    editor.undo()
    np.testing.assert_array_equal(current(), afterEdits)

    # Saved through the segmentation storage node; read back through MRML ...
    savedPath = tmp_path / "corrected.seg.nrrd"
    scene2, reloaded, _keep2 = testing.saveAndReload(seg, savedPath)
    volume2 = loadVolume(scene2, path)
    assert reloaded.GetSegmentation().GetSegment(segmentId).GetName() == "GTV"
    np.testing.assert_array_equal(testing.segmentArray(reloaded, segmentId, volume2).astype(bool), afterEdits)

    # ... and through slicerio, mapping every stored voxel by its physical position.
    import slicerio

    saved = slicerio.read_segmentation(str(savedPath))
    voxels = slicerio.segment_mask(saved, segmentId) if saved["voxels"].ndim == 3 else None
    assert voxels is not None
    ijkToLps = np.asarray(saved["ijkToLPS"], dtype=float)
    ones = np.argwhere(voxels > 0)  # (i, j, k) of the saved grid
    lps = np.c_[ones, np.ones(len(ones))] @ ijkToLps.T
    rasPoints = lps[:, :3] * np.array([-1.0, -1.0, 1.0])
    rasToIjk = np.linalg.inv(testing.ijkToRasArray(volume))
    ijk = np.c_[rasPoints, np.ones(len(rasPoints))] @ rasToIjk.T
    assert np.allclose(ijk[:, :3], np.round(ijk[:, :3]), atol=1e-4)
    fromFile = np.zeros_like(afterEdits)
    idx = np.round(ijk[:, :3]).astype(int)
    fromFile[idx[:, 2], idx[:, 1], idx[:, 0]] = True
    np.testing.assert_array_equal(fromFile, afterEdits)
