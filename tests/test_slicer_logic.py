"""The Slicer module logic against real MRML (slicer-core): volume node in, segmentation node out.

Every run here goes through the real CLI in a subprocess. The bundles are the real networks with
weights set so the result is known (see GTVAutoSegSlicerLib.testing): an untrained network's
output is arbitrary.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
vtk = pytest.importorskip("vtk")

from GTVAutoSegSlicerLib import (  # noqa: E402
    GTVAutoSegError,
    RunStatus,
    SegmentationLogic,
    SegmentationParameters,
)
from GTVAutoSegSlicerLib import testing  # noqa: E402
from GTVAutoSegSlicerLib.nodes import loadVolume, probabilityTableFor  # noqa: E402
from GTVAutoSegSlicerLib.process import InferenceProcess, parseProgressLine, pythonExecutable  # noqa: E402
from GTVAutoSegSlicerLib.review import slicesNearThreshold  # noqa: E402

P_FG = testing.FOREGROUND_SLICE_PROBABILITY


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    return {
        "foreground": testing.makeBundle(folder / "fg.pt", "foreground", anatomicRegion="lung"),
    }


def _expectedForegroundMask(path: Path) -> np.ndarray:
    """What the "foreground" bundle must give on ``path``, without running any network: the
    segmenter marks every model-space pixel of every slice, so the mask is the preprocessing
    inverse of an all-ones stack (the body crop box on every slice)."""
    from GTVAutoSegLib import io
    from GTVAutoSegLib.preprocessing import PreprocessSpec, prepare, restore

    slices, state = prepare(io.read_ct(path), PreprocessSpec(size=64))
    return (restore(np.ones(slices.shape, np.float32), state) >= 0.5).astype(np.uint8)


def _ijkToRasMatrix(volumeNode):
    m = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(m)
    return m


def _setImageArray(image, array: np.ndarray) -> None:
    from vtk.util.numpy_support import vtk_to_numpy

    dims = image.GetDimensions()
    vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])[:] = array
    image.Modified()


def _terminologyParts(entry: str) -> list[str]:
    return entry.split("~")


def _processAlive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------ real CT


def test_real_ct_fills_segmentation_node_with_gtv(shared_data, bundles, tmp_path):
    ctPath = shared_data / "lung_pyradiomics" / "lung1_image.nrrd"
    if not ctPath.is_file():
        pytest.skip(f"{ctPath} not found")
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, ctPath)
    logic = SegmentationLogic(scene)
    progress = []

    run = logic.process(volume, parameters=SegmentationParameters(model=str(bundles["foreground"]), device="cpu"),
                        onProgress=lambda r: progress.append((r.percent, r.stage)))

    assert run.status == RunStatus.SUCCEEDED, run.message
    assert progress and progress[-1][0] == 100.0
    assert [p for p, _ in progress] == sorted(p for p, _ in progress)
    seg = run.segmentationNode
    assert seg is not None and seg.GetScene() is scene
    assert seg.GetName() == "lung1_image GTV"
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segmentId = segmentation.GetNthSegmentID(0)
    segment = segmentation.GetSegment(segmentId)
    assert segment.GetName() == "GTV"

    from GTVAutoSegLib.segfile import GTV_COLOR

    assert segment.GetColor() == pytest.approx(GTV_COLOR)
    parts = _terminologyParts(segment.GetTerminology())
    assert len(parts) == 7
    assert parts[0] == "GTVAutoSeg - Radiotherapy target volumes"
    assert parts[1] == "SCT^49755003^Morphologically Altered Structure"
    assert parts[2] == "SCT^228791009^GTV"
    assert parts[5] == "SCT^39607008^Lung"  # the bundle's anatomic region

    # Reference geometry: the input volume, so DICOM SEG export and later edits use the CT's grid.
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
    ijkToRas = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijkToRas)
    expectedGeometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(ijkToRas, volume.GetImageData().GetExtent())
    assert segmentation.GetConversionParameter("Reference image geometry") == expectedGeometry

    # Closed surface for the 3D view, and display nodes.
    assert segmentation.ContainsRepresentation("Closed surface")
    surface = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(segmentId, surface)
    assert surface.GetNumberOfPoints() > 0
    assert seg.GetDisplayNode() is not None

    # Voxels: exactly the body crop box that the library's preprocessing gives on the same file.
    voxels = testing.segmentArray(seg, segmentId, volume)
    expected = _expectedForegroundMask(ctPath)
    assert voxels.shape == expected.shape == testing.volumeArray(volume).shape
    assert 0 < voxels.sum() < voxels.size
    np.testing.assert_array_equal(voxels, expected)
    spacing = volume.GetSpacing()
    assert run.report["volume_cc"] == pytest.approx(voxels.sum() * np.prod(spacing) / 1000.0, rel=1e-3)

    # Per-slice probabilities in a table linked to the segmentation.
    table = run.tableNode
    assert probabilityTableFor(seg) is table
    nk = volume.GetImageData().GetDimensions()[2]
    assert table.GetNumberOfRows() == nk
    col = table.GetTable().GetColumnByName("probability")
    probabilities = np.array([col.GetValue(i) for i in range(nk)])
    assert probabilities == pytest.approx(np.full(nk, P_FG), abs=1e-3)
    selected = table.GetTable().GetColumnByName("selected")
    assert all(selected.GetValue(i) == 1 for i in range(nk))

    # Review list: nothing is within 0.1 of the 0.5 threshold; everything within 0.4.
    assert logic.reviewList(seg, 0.1) == []
    assert [r.sliceIndex for r in logic.reviewList(seg, 0.4)] == list(range(nk))

    # Saved through the MRML storage node and read back in a fresh scene: the same voxels and metadata.
    scene2, reloaded, _keep2 = testing.saveAndReload(seg, tmp_path / "lung1_gtv.seg.nrrd")
    volume2 = loadVolume(scene2, ctPath)
    reloadedSegment = reloaded.GetSegmentation().GetSegment(segmentId)
    assert reloadedSegment.GetName() == "GTV"
    assert reloadedSegment.GetColor() == pytest.approx(GTV_COLOR)
    assert reloadedSegment.GetTerminology() == segment.GetTerminology()
    np.testing.assert_array_equal(testing.segmentArray(reloaded, segmentId, volume2), voxels)


# ------------------------------------------------------------------------------ phantom geometry


def test_phantom_on_flipped_grid_threshold_and_review_positions(bundles, tmp_path):
    """A grid with flipped axes and an origin: slice centres (for jumping the views) and the
    threshold the user sets both reach the result."""
    from GTVAutoSegLib.phantom import make_phantom

    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0)
    ct, _ = make_phantom(shape=(5, 48, 48), spacing=(2.0, 2.5, 3.0), seed=3, tumour_slices=2,
                         direction=direction, origin=(40.0, -30.0, 100.0))
    path = tmp_path / "phantom_flipped.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, path)
    # The user's segmentation already holds an organ at risk and an old GTV.
    existing = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plan structures")
    cord = slicer.vtkOrientedImageData()
    cord.SetExtent(volume.GetImageData().GetExtent())
    cord.SetImageToWorldMatrix(_ijkToRasMatrix(volume))
    cord.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    cordVoxels = testing.imageArray(cord) * 0
    cordVoxels[1:4, 30:34, 22:26] = 1
    _setImageArray(cord, cordVoxels)
    cordSegment = slicer.vtkSegment()
    cordSegment.SetName("Spinal cord")
    cordSegment.AddRepresentation("Binary labelmap", cord)
    existing.GetSegmentation().AddSegment(cordSegment, "cord")
    existing.GetSegmentation().AddEmptySegment("old_gtv", "GTV")
    logic = SegmentationLogic(scene)

    # A threshold above every slice's probability: no slice segmented, an empty GTV.
    run = logic.process(volume, existing, SegmentationParameters(
        model=str(bundles["foreground"]), device="cpu", threshold=0.9, reviewMargin=0.05, createSurface=False))

    assert run.status == RunStatus.SUCCEEDED, run.message
    assert run.segmentationNode is existing  # the node the user chose is filled, not a new one
    assert run.report["threshold"] == pytest.approx(0.9)
    assert run.report["slices_segmented"] == 0
    segmentation = existing.GetSegmentation()
    names = sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["GTV", "Spinal cord"]  # the old GTV replaced, the organ at risk kept
    segmentId = existing.GetAttribute("GTVAutoSeg.segmentID")
    assert segmentId != "old_gtv" and segmentation.GetSegment(segmentId).GetName() == "GTV"
    assert testing.segmentArray(existing, segmentId, volume).sum() == 0
    np.testing.assert_array_equal(testing.segmentArray(existing, "cord", volume), cordVoxels)
    assert not existing.GetSegmentation().ContainsRepresentation("Closed surface")
    logic.setSurfaceVisible(existing, True)  # the "Show 3D" toggle
    assert existing.GetSegmentation().ContainsRepresentation("Closed surface")

    # Every slice is 0.019 below the threshold: all listed, each with its slice centre in RAS.
    review = run.reviewSlices
    assert sorted(r.sliceIndex for r in review) == list(range(5))
    assert all(not r.selected and r.probability == pytest.approx(P_FG, abs=1e-3) for r in review)
    # Each listed position lies on its slice: mapped through the phantom's own grid (SimpleITK,
    # LPS) it lands in the middle of the phantom slice that holds the same voxels. Slicer's reader
    # stores this grid with the slice order reversed, so index and position must travel together.
    original = ct.to_sitk()
    loaded = testing.volumeArray(volume)
    for r in review:
        lps = (-r.ras[0], -r.ras[1], r.ras[2])
        i, j, k = original.TransformPhysicalPointToContinuousIndex(lps)
        assert (i, j) == pytest.approx(((48 - 1) / 2, (48 - 1) / 2), abs=1e-6)
        assert k == pytest.approx(round(k), abs=1e-6)
        np.testing.assert_array_equal(loaded[r.sliceIndex], ct.array[round(k)])
    assert {round(original.TransformPhysicalPointToContinuousIndex((-r.ras[0], -r.ras[1], r.ras[2]))[2])
            for r in review} == set(range(5))


def test_failed_run_raises_and_creates_no_node(tmp_path):
    from GTVAutoSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=(3, 32, 32), spacing=(2.0, 2.0, 3.0), seed=0, tumour_slices=1)
    path = tmp_path / "small.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, path)
    logic = SegmentationLogic(scene)
    missing = tmp_path / "no_such_model.pt"
    finished = []

    with pytest.raises(GTVAutoSegError, match="no_such_model"):
        logic.process(volume, parameters=SegmentationParameters(model=str(missing), device="cpu"),
                      onFinished=finished.append)

    assert len(finished) == 1 and finished[0].status == RunStatus.FAILED
    assert scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0
    assert not logic.isRunning()


def test_input_checks_raise_before_anything_starts(tmp_path):
    scene, _keep = testing.newScene()
    logic = SegmentationLogic(scene, processFactory=lambda args, env: pytest.fail("no process may start"))
    with pytest.raises(GTVAutoSegError, match="select an input"):
        logic.process(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(GTVAutoSegError, match="no voxels"):
        logic.process(empty)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(GTVAutoSegError, match="not a scalar"):
        logic.process(labelmap)
    with pytest.raises(GTVAutoSegError, match="unknown device 'gpu0'"):
        SegmentationParameters(device="gpu0").check()
    parameters = SegmentationParameters(device="CUDA:1")
    parameters.check()
    assert parameters.device == "cuda:1"
    with pytest.raises(GTVAutoSegError, match="threshold"):
        SegmentationParameters(threshold=1.5).check()


# ------------------------------------------------------------------------------ cancel


def test_cancel_mid_run_leaves_output_untouched_and_no_process(bundles, tmp_path):
    from GTVAutoSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=(40, 64, 64), spacing=(2.0, 2.0, 3.0), seed=5)
    path = tmp_path / "phantom40.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, path)
    # The user's chosen output node already holds an earlier result; a cancelled run must keep it.
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "earlier GTV")
    earlierId = output.GetSegmentation().AddEmptySegment("earlier")
    nodesBefore = scene.GetNumberOfNodes()
    logic = SegmentationLogic(scene)
    progress, finished = [], []

    run = logic.process(volume, output, SegmentationParameters(model=str(bundles["foreground"]), device="cpu"),
                        waitForCompletion=False, onProgress=lambda r: progress.append(r.stage),
                        onFinished=finished.append)
    assert run.status == RunStatus.RUNNING and logic.isRunning()
    pid = run.pid
    workDir = logic._active.workDir  # this run's private folder (other test runs may make their own)
    assert workDir.is_dir()
    deadline = time.monotonic() + 120
    while not {"preprocess", "classifier", "segmenter"} & set(progress):
        assert logic.poll(), f"the run ended before it could be cancelled: {run.message}"
        assert time.monotonic() < deadline, "no progress line within 120 s"
        time.sleep(0.05)
    assert _processAlive(pid)

    logic.cancel()

    assert run.status == RunStatus.CANCELLED
    assert finished == [run]
    assert not logic.isRunning() and not logic.poll()
    assert not _processAlive(pid)
    if os.name != "nt":
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)  # nothing left in the process group either
    # The output node is as it was: its one earlier segment, no GTV, no table, no new nodes.
    segmentation = output.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegmentID(0) == earlierId
    assert probabilityTableFor(output) is None
    assert scene.GetNumberOfNodes() == nodesBefore
    assert scene.GetNodesByClass("vtkMRMLTableNode").GetNumberOfItems() == 0
    assert run.segmentationNode is None
    # The private working folder is gone.
    assert not workDir.exists()


def test_terminate_tree_ends_grandchildren():
    """The process group is ended, not just the child: a grandchild must go too."""
    if os.name == "nt":
        pytest.skip("POSIX process groups")
    code = ("import subprocess, sys, time\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('GRANDCHILD', g.pid, flush=True)\n"
            "time.sleep(60)\n")
    process = InferenceProcess([sys.executable, "-c", code])
    grandchild = None
    deadline = time.monotonic() + 30
    while grandchild is None and time.monotonic() < deadline:
        for stream, line in process.readLines():
            if stream == "stdout" and line.startswith("GRANDCHILD"):
                grandchild = int(line.split()[1])
        time.sleep(0.02)
    assert grandchild is not None and _processAlive(grandchild)

    process.terminateTree(gracePeriod=1.0)

    assert process.returnCode() is not None
    deadline = time.monotonic() + 5
    while _processAlive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processAlive(process.pid)
    assert not _processAlive(grandchild)


# ------------------------------------------------------------------------------ small pieces


def test_progress_lines_are_parsed():
    assert parseProgressLine("PROGRESS 45.0 classifier") == parseProgressLine("PROGRESS 45 classifier")
    p = parseProgressLine("PROGRESS 45.0 classifier")
    assert (p.percent, p.stage) == (45.0, "classifier")
    assert parseProgressLine("PROGRESS 120 write").percent == 100.0
    assert parseProgressLine("case: GTV 1.0 cc") is None
    assert parseProgressLine("PROGRESS soon") is None


def test_review_list_is_ordered_by_closeness_to_threshold():
    probabilities = [0.1, 0.52, 0.45, 0.9, 0.5, 0.58]
    assert slicesNearThreshold(probabilities, 0.5, 0.08) == [4, 1, 2, 5]
    assert slicesNearThreshold(probabilities, 0.5, 0.0) == [4]
    assert slicesNearThreshold(probabilities, float("nan"), 0.1) == []


def test_command_line_and_interpreter(tmp_path):
    scene, _keep = testing.newScene()
    logic = SegmentationLogic(scene)
    assert logic.python == pythonExecutable() == sys.executable  # outside Slicer: this interpreter
    args = logic.commandLine(tmp_path / "in.nrrd", tmp_path / "out",
                             SegmentationParameters(model="hn-v1", device="cuda", threshold=0.35))
    assert args[:4] == [sys.executable, "-m", "GTVAutoSegLib.cli", "segment"]
    assert args[args.index("--model") + 1] == "hn-v1"
    assert float(args[args.index("--threshold") + 1]) == 0.35
    assert args[args.index("--device") + 1] == "cuda"
    assert args[args.index("--progress") + 1] == "lines"
    default = logic.commandLine(tmp_path / "in.nrrd", tmp_path / "out", SegmentationParameters())
    assert "--model" not in default and "--threshold" not in default
    env = logic.childEnvironment()
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
