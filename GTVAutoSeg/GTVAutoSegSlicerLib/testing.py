"""Helpers for the module's tests (pytest with slicer-core, and the self-test inside Slicer).

:func:`runSelfTest` is the body of the module's self-test (``GTVAutoSegTest`` in Slicer's Reload and
Test, and ctest); the pytest suite runs the very same function against slicer-core, so it cannot
rot unnoticed.

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
import slicer.util

from .nodes import segmentArray  # noqa: F401  (the tests read segments through the module's own code)

FOREGROUND_SLICE_PROBABILITY = float(1.0 / (1.0 + np.exp(-2.0)))
KINDS = ("foreground", "background", "untrained")


def makeBundle(path: str | Path, kind: str = "foreground", size: int = 64, threshold: float = 0.5,
               anatomicRegion: str = "lung", seed: int = 0, target: str = "GTV") -> Path:
    """Write a small model bundle (preprocess size ``size``, segmenting ``target``) and return its path."""
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
        anatomic_region=anatomicRegion, target=target,
        provenance={"note": f"test bundle ({kind}), not a trained model"},
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
    """A ``vtkImageData`` as a ``(k, j, i)`` numpy array (a copy); kept: filter outputs have no node for
    ``slicer.util.arrayFromVolume``."""
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1]).copy()


def volumeArray(volumeNode) -> np.ndarray:
    """The volume's voxels ``(k, j, i)``, a copy (``slicer.util.arrayFromVolume`` gives a view)."""
    return slicer.util.arrayFromVolume(volumeNode).copy()


def ijkToRasArray(volumeNode) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


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


# ------------------------------------------------------------------------------ the module's self-test


class SelfTestFailure(AssertionError):
    """A check of :func:`runSelfTest` failed."""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SelfTestFailure(message)


def runSelfTest(scene, workDir: str | Path, log=print, python: str | None = None) -> dict:
    """Segment a phantom CT through the module logic, then correct its slice decision, and check
    every step against what the test bundle must give.

    Args:
        scene: the MRML scene to work in (``slicer.mrmlScene`` in Slicer, a fresh one under pytest).
        workDir: an empty folder for the phantom and the bundle.
        log: shows each step (Slicer's ``delayDisplay`` in the self-test).
        python: interpreter for the inference process (default: the logic's own choice).

    Returns:
        The nodes and arrays it made, for further checks.

    Raises:
        SelfTestFailure: a check failed (the message says which).
    """
    import SimpleITK as sitk

    from GTVAutoSegLib.phantom import make_phantom

    from .logic import RunStatus, SegmentationLogic, SegmentationParameters
    from .nodes import loadVolume, probabilityTableFor, readProbabilityTable
    from .review import USER_EXCLUDED, USER_INCLUDED, sliceChanges

    workDir = Path(workDir)
    ct, _mask = make_phantom(shape=(6, 64, 64), spacing=(2.0, 2.0, 3.0), seed=0, tumour_slices=3)
    ctPath = workDir / "phantom.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(ctPath))
    volume = loadVolume(scene, ctPath, "phantom")
    bundle = str(makeBundle(workDir / "selftest.pt", "foreground", target="PTV70", anatomicRegion="lung"))
    logic = SegmentationLogic(scene, python=python)
    lines: list[str] = []

    log("Segmenting a phantom CT (every slice passes the classifier)")
    full = logic.process(volume, parameters=SegmentationParameters(model=bundle, device="cpu"), onLog=lines.append)
    _check(full.status == RunStatus.SUCCEEDED, f"the run did not succeed: {full.message}")
    segmentation = full.segmentationNode.GetSegmentation()
    _check(segmentation.GetNumberOfSegments() == 1, "the result should hold one segment")
    segmentId = segmentation.GetNthSegmentID(0)
    _check(segmentation.GetSegment(segmentId).GetName() == "PTV70", "the segment is named after the model's target")
    _check(full.tableNode.GetNumberOfRows() == 6, "one probability row per slice")
    _check(full.report["volume_cc"] > 0.0, "the target has a volume")
    _check(any(line.startswith("timings:") for line in lines), "the log shows the timings")
    reference = segmentArray(full.segmentationNode, segmentId, volume)
    _check(reference[[1, 3]].any(), "the phantom's slices 1 and 3 are segmented")

    log("Segmenting again with a threshold no slice passes: an empty target")
    strict = logic.process(volume, parameters=SegmentationParameters(model=bundle, device="cpu", threshold=0.95))
    node = strict.segmentationNode
    _check(node is not full.segmentationNode, "a second run without an output node makes a new node")
    strictId = node.GetSegmentation().GetNthSegmentID(0)
    _check(segmentArray(node, strictId, volume).sum() == 0, "nothing passes a 0.95 threshold")

    log("Ticking slices 1 and 3 and re-segmenting them")
    ticked = {1: True, 3: True}
    include, exclude = sliceChanges(logic.reviewList(node, 1.0), ticked)
    _check((include, exclude) == ([1, 3], []), f"ticking asks for slices 1 and 3, got {include}, {exclude}")
    fixed = logic.resegmentSlices(node, include, exclude, SegmentationParameters(device="cpu"))
    voxels = segmentArray(node, strictId, volume)
    _check(fixed.status == RunStatus.SUCCEEDED, f"re-segmenting did not succeed: {fixed.message}")
    _check(np.array_equal(voxels[[1, 3]], reference[[1, 3]]), "re-segmented slices equal a full run there")
    _check(voxels[[0, 2, 4, 5]].sum() == 0, "no other slice changed")

    log("Unticking slice 1: it is emptied without running the networks")
    emptied = logic.resegmentSlices(node, [], [1])
    voxels = segmentArray(node, strictId, volume)
    _check(emptied.status == RunStatus.SUCCEEDED and emptied.pid is None, "emptying starts no process")
    _check(voxels[1].sum() == 0 and np.array_equal(voxels[3], reference[3]), "only slice 1 was emptied")
    table = readProbabilityTable(probabilityTableFor(node))
    _check(table.user[1] == USER_EXCLUDED and table.user[3] == USER_INCLUDED, "the table records the corrections")
    _check(table.selected[3] and not table.selected[1], "the table records which slices hold the target")
    log("Self-test passed")
    return {"volume": volume, "full": full, "corrected": node, "segmentId": strictId, "reference": reference}
