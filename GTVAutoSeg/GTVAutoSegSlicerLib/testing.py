"""Helpers for the module's tests (pytest with slicer-core, and the self-test inside Slicer).

Model bundles here use the real networks with weights set so the output is known in advance: an
untrained network's output is arbitrary, so a test could not say which voxels must come out.

- ``foreground``: the classifier's final layer has zero weights and bias ``(0, 2)``, so every slice
  gets probability ``sigmoid(2) = 0.8808``; SANet's final 1x1 convolution has zero weights and bias
  ``(0, 5)``, so every pixel it sees is foreground. The mask is then exactly what the preprocessing
  inverse gives for an all-ones model-space stack: the body crop box on every slice.
- ``background``: the same with the segmenter bias ``(5, 0)``: an empty mask.
- ``untrained``: freshly initialised networks (seeded), for tests that only look at structure.

Nothing is imported from torch until a bundle is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy

import slicer

FOREGROUND_SLICE_PROBABILITY = float(1.0 / (1.0 + np.exp(-2.0)))
KINDS = ("foreground", "background", "untrained")


def makeBundle(path: str | Path, kind: str = "foreground", size: int = 64, threshold: float = 0.5,
               anatomicRegion: str = "lung", seed: int = 0) -> Path:
    """Write a small model bundle (preprocess size ``size``) and return its path."""
    import torch

    from GTVAutoSegLib.bundle import ModelBundle, save_bundle
    from GTVAutoSegLib.models import NetConfig, build_network
    from GTVAutoSegLib.preprocessing import PreprocessSpec

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    torch.manual_seed(seed)
    classifierConfig, segmenterConfig = NetConfig("resnet18_classifier"), NetConfig("sanet")
    classifier, segmenter = build_network(classifierConfig), build_network(segmenterConfig)
    if kind != "untrained":
        with torch.no_grad():
            classifier.fc.weight.zero_()
            classifier.fc.bias.copy_(torch.tensor([0.0, 2.0]))
            segmenter.classifier.weight.zero_()
            fg = 5.0 if kind == "foreground" else -5.0
            segmenter.classifier.bias.copy_(torch.tensor([0.0, fg]))
    bundle = ModelBundle.from_networks(
        classifier, segmenter, name=f"test-{kind}", version="0.0.1", classifier=classifierConfig,
        segmenter=segmenterConfig, preprocess=PreprocessSpec(size=size), threshold=threshold,
        anatomic_region=anatomicRegion, provenance={"note": f"test bundle ({kind}), not a trained model"},
    )
    path = Path(path)
    save_bundle(bundle, path, half=True)
    return path


def newScene():
    """A scene with the Segmentations logic attached, as Slicer has (segment editor node class,
    converter rules). Returns ``(scene, segmentationsLogic)``; keep the logic alive with the scene."""
    scene = slicer.vtkMRMLScene()
    segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentationsLogic.SetMRMLScene(scene)
    return scene, segmentationsLogic


def imageArray(image) -> np.ndarray:
    """A ``vtkImageData`` as a ``(k, j, i)`` numpy array (a copy)."""
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()


def volumeArray(volumeNode) -> np.ndarray:
    return imageArray(volumeNode.GetImageData())


def segmentArray(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """A segment's voxels on ``volumeNode``'s grid, ``(k, j, i)`` uint8 0/1."""
    labelmap = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap):
        raise ValueError(f"segment {segmentId} has no binary labelmap")
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volumeNode.GetImageData().GetExtent())
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    reference.SetImageToWorldMatrix(ijkToRas)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    resampled = slicer.vtkOrientedImageData()
    if labelmap.IsEmpty():
        return np.zeros(volumeNode.GetImageData().GetDimensions()[::-1], np.uint8)
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(labelmap, reference, resampled)
    values = imageArray(resampled)
    label = segmentationNode.GetSegmentation().GetSegment(segmentId).GetLabelValue()
    return (values == label).astype(np.uint8)


def ijkToRasArray(volumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def saveAndReload(segmentationNode, path: str | Path):
    """Save through the node's own ``.seg.nrrd`` storage node (as File > Save does) and read the
    file back into a new segmentation node of a fresh scene.

    Returns:
        ``(scene, reloadedNode, keep)``; hold ``keep`` while the scene is used (see :func:`newScene`).
    """
    if segmentationNode.GetStorageNode() is None and not segmentationNode.AddDefaultStorageNode():
        raise RuntimeError("the segmentation node has no storage node")
    storage = segmentationNode.GetStorageNode()
    storage.SetFileName(str(path))
    if not storage.WriteData(segmentationNode):
        raise RuntimeError(f"could not write {path}")
    scene, keep = newScene()
    reloaded = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = slicer.vtkMRMLSegmentationStorageNode()
    reader.SetFileName(str(path))
    if not reader.ReadData(reloaded):
        raise RuntimeError(f"could not read {path} back")
    return scene, reloaded, keep
