"""Correcting the slice decision in the module logic, against real MRML (slicer-core): the reviewer
ticks slices the classifier missed and unticks one it wrongly kept, manual edits are made with
Slicer's own Segment Editor logic, and "Re-segment selected slices" must change exactly the
corrected slices, to what a fresh run gives there.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from GTVAutoSegSlicerLib import (  # noqa: E402
    GTVAutoSegError,
    RunStatus,
    SegmentationLogic,
    SegmentationParameters,
    sliceChanges,
)
from GTVAutoSegSlicerLib import testing  # noqa: E402
from GTVAutoSegSlicerLib.nodes import loadVolume, probabilityTableFor, readProbabilityTable, writeVolume  # noqa: E402
from GTVAutoSegSlicerLib.review import USER_EXCLUDED, USER_INCLUDED, USER_NONE  # noqa: E402

from test_slicer_editor import Editor, radiusInGap, voxelCentresRas  # noqa: E402


@pytest.fixture(scope="module")
def foregroundBundle(tmp_path_factory) -> Path:
    return testing.makeBundle(tmp_path_factory.mktemp("bundles") / "fg.pt", "foreground", target="PTV70")


def _phantomVolume(scene, folder: Path, shape=(8, 48, 48)):
    from GTVAutoSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=shape, spacing=(1.6, 1.6, 2.5), seed=4, tumour_slices=3)
    path = folder / "phantom.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(path))
    return loadVolume(scene, path, "phantom")


def _studyOf(scene, volume):
    """Put the volume under patient / study items, as Slicer's DICOM import does."""
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT study")
    hierarchy.CreateItem(study, volume)
    return hierarchy, study


def test_corrected_slices_equal_a_fresh_run_and_manual_edits_elsewhere_survive(foregroundBundle, tmp_path):
    scene, _keep = testing.newScene()
    volume = _phantomVolume(scene, tmp_path)
    hierarchy, study = _studyOf(scene, volume)
    logic = SegmentationLogic(scene)
    lines = []

    # The classifier passes nothing at 0.95: an empty target, every slice "skipped".
    run = logic.process(volume, parameters=SegmentationParameters(model=str(foregroundBundle), device="cpu",
                                                                  threshold=0.95, createSurface=False),
                        onLog=lines.append)
    node = run.segmentationNode
    segmentId = node.GetSegmentation().GetNthSegmentID(0)
    assert node.GetSegmentation().GetSegment(segmentId).GetName() == "PTV70"
    assert node.GetName() == "phantom PTV70"
    # The result and its table sit in the CT's study, not at the top of the subject hierarchy.
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(run.tableNode)) == study
    # The log: the command, the timing of every stage, the outcome.
    assert "--threshold 0.95" in lines[0]
    assert any(line.startswith("timings: read") and "segmenter" in line and "total" in line for line in lines)
    assert lines[-1] == run.message

    # The reviewer paints on slices 1 and 6 and erases nothing yet.
    ras = voxelCentresRas(volume)
    editor = Editor(scene, node, segmentId, volume)
    for k in (1, 6):
        centre = ras[k, 24, 20]
        distance = np.linalg.norm(ras - centre, axis=-1)
        editor.paintSphere(centre, radiusInGap(distance, 2.0))
    painted = testing.segmentArray(node, segmentId, volume)
    assert painted[1].any() and painted[6].any() and not painted[[3, 4]].any()

    # Ticks slices 3 and 4 in the review list (all slices are listed at margin 1).
    review = logic.reviewList(node, 1.0)
    assert [r.sliceIndex for r in review if not r.selected] == list(range(8))
    include, exclude = sliceChanges(review, {3: True, 4: True})
    assert (include, exclude) == ([3, 4], [])
    corrected = logic.resegmentSlices(node, include, exclude, SegmentationParameters(device="cpu"), onLog=lines.append)
    assert corrected.status == RunStatus.SUCCEEDED, corrected.message
    assert "--only-slices 3,4" in " ".join(lines)

    # A fresh run in which the classifier passes every slice: slices 3 and 4 must equal it.
    fresh = logic.process(volume, parameters=SegmentationParameters(model=str(foregroundBundle), device="cpu",
                                                                    createSurface=False))
    freshVoxels = testing.segmentArray(fresh.segmentationNode, fresh.segmentationNode.GetSegmentation().GetNthSegmentID(0), volume)
    after = testing.segmentArray(node, segmentId, volume)
    assert freshVoxels[[3, 4]].any()
    np.testing.assert_array_equal(after[[3, 4]], freshVoxels[[3, 4]])
    others = [0, 1, 2, 5, 6, 7]
    np.testing.assert_array_equal(after[others], painted[others])  # the manual edits, untouched

    # Unticking slice 4 empties it, without a process, and leaves the rest.
    review = logic.reviewList(node, 1.0)
    assert {r.sliceIndex: r.label() for r in review}[3] == "slice 3: p = 0.881 (added by the reviewer)"
    include, exclude = sliceChanges(review, {4: False})
    assert (include, exclude) == ([], [4])
    finished = []
    emptied = logic.resegmentSlices(node, include, exclude, onFinished=finished.append)
    assert emptied.status == RunStatus.SUCCEEDED and emptied.pid is None and finished == [emptied]
    final = testing.segmentArray(node, segmentId, volume)
    assert final[4].sum() == 0
    np.testing.assert_array_equal(np.delete(final, 4, axis=0), np.delete(after, 4, axis=0))
    table = readProbabilityTable(probabilityTableFor(node))
    assert table.user == [USER_NONE] * 3 + [USER_INCLUDED, USER_EXCLUDED] + [USER_NONE] * 3
    assert table.selected == [False] * 3 + [True, False] + [False] * 3
    assert float(node.GetAttribute("GTVAutoSeg.volumeCc")) == pytest.approx(
        final.sum() * np.prod(volume.GetSpacing()) / 1000.0)


def test_the_shipped_model_on_a_real_ct(shared_data, tmp_path):
    """The real model and CT: a missed slice added, a kept one removed, a manual edit kept, and the
    added slice equal to the library's fresh run on the same file with that slice included."""
    ctPath = shared_data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz"
    if not ctPath.is_file():
        pytest.skip(f"{ctPath} not found")
    scene, _keep = testing.newScene()
    volume = loadVolume(scene, ctPath, "pt_201")
    logic = SegmentationLogic(scene)
    run = logic.process(volume, parameters=SegmentationParameters(device="cpu", createSurface=False))
    node = run.segmentationNode
    segmentId = node.GetAttribute("GTVAutoSeg.segmentID")
    assert node.GetSegmentation().GetSegment(segmentId).GetName() == "PTV70"
    table = readProbabilityTable(run.tableNode)
    probabilities = np.array(table.probabilities)
    before = testing.segmentArray(node, segmentId, volume)
    drawn = before.reshape(before.shape[0], -1).any(axis=1)
    skipped = np.flatnonzero(~np.array(table.selected))
    kept = np.flatnonzero(np.array(table.selected) & drawn)  # kept, with something segmented on it
    missed = int(skipped[np.argmax(probabilities[skipped])])  # the likeliest miss
    wrong = int(kept[np.argmin(probabilities[kept])])         # the least sure keep
    edited = int(kept[len(kept) // 2]) if int(kept[len(kept) // 2]) != wrong else int(kept[0])
    assert before[wrong].any() and before[edited].any() and not before[missed].any()

    editor = Editor(scene, node, segmentId, volume)
    editor.eraseBox((edited, edited + 1), (0, 64), (0, 128))  # the reviewer trims one slice by hand
    edits = testing.segmentArray(node, segmentId, volume)
    assert edits[edited].sum() < before[edited].sum()

    corrected = logic.resegmentSlices(node, [missed], [wrong], SegmentationParameters(device="cpu"))
    assert corrected.status == RunStatus.SUCCEEDED, corrected.message
    after = testing.segmentArray(node, segmentId, volume)
    assert after[wrong].sum() == 0
    untouched = [k for k in range(after.shape[0]) if k not in (missed, wrong)]
    np.testing.assert_array_equal(after[untouched], edits[untouched])

    # The library on the very file the module hands the CLI, the missed slice included by the flag.
    from GTVAutoSegLib import io
    from GTVAutoSegLib.bundle import open_model
    from GTVAutoSegLib.pipeline import Segmenter
    from GTVAutoSegLib.slices import SliceSelection

    with tempfile.TemporaryDirectory() as tmp:
        written = writeVolume(volume, Path(tmp) / "ct.nrrd")
        fresh = Segmenter(open_model(None), device="cpu")(io.read_ct(written), selection=SliceSelection.of(include=[missed]))
    assert fresh.selected[missed]
    np.testing.assert_array_equal(after[missed], fresh.mask.array[missed])


def test_corrections_are_refused_with_one_line_where_they_cannot_apply(foregroundBundle, tmp_path):
    scene, _keep = testing.newScene()
    volume = _phantomVolume(scene, tmp_path, shape=(5, 40, 40))
    logic = SegmentationLogic(scene, processFactory=lambda args, env: pytest.fail("no process may start"))
    foreign = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn by hand")
    with pytest.raises(GTVAutoSegError, match="'drawn by hand' was not made by GTVAutoSeg"):
        logic.resegmentSlices(foreign, [1])
    run = SegmentationLogic(scene).process(volume, parameters=SegmentationParameters(
        model=str(foregroundBundle), device="cpu", createSurface=False))
    node = run.segmentationNode
    for include, exclude, message in (([1], [1], "cannot be both added and removed"),
                                      ([7], [], r"slice\(s\) 7 do not exist: the CT has 5 slices \(0-4\)"),
                                      ([], [], "no slice was ticked or unticked")):
        with pytest.raises(GTVAutoSegError, match=message):
            logic.resegmentSlices(node, include, exclude)
    node.GetSegmentation().RemoveSegment(node.GetAttribute("GTVAutoSeg.segmentID"))
    with pytest.raises(GTVAutoSegError, match="target segment .* was deleted"):
        logic.resegmentSlices(node, [], [1])
    other = SegmentationLogic(scene).process(volume, parameters=SegmentationParameters(
        model=str(foregroundBundle), device="cpu", createSurface=False)).segmentationNode
    scene.RemoveNode(volume)
    with pytest.raises(GTVAutoSegError, match="no longer in the scene"):
        logic.resegmentSlices(other, [], [1])


class _ExitedProcess:
    """A process that has already exited with ``code`` after writing ``files`` into its output folder."""

    def __init__(self, args, code, files):
        out = Path(args[args.index("-o") + 1])
        out.mkdir(parents=True)
        for name, content in files.items():
            (out / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        self.pid, self.code = 4242, code

    def readLines(self):
        return [("stderr", "gtvautoseg: warning: something worth knowing")]

    def returnCode(self):
        return self.code

    def terminateTree(self, gracePeriod=3.0):
        pass

    def stderrTail(self):
        return []


def test_failures_end_the_run_with_one_line_and_leave_nothing_behind(foregroundBundle, tmp_path):
    scene, _keep = testing.newScene()
    volume = _phantomVolume(scene, tmp_path, shape=(5, 32, 32))
    before = set(Path(tempfile.gettempdir()).glob("GTVAutoSeg-*"))

    # The interpreter cannot be started (Popen raises): a one-line error, no temporary folder left.
    missing = SegmentationLogic(scene, python=str(tmp_path / "no-python"))
    with pytest.raises(GTVAutoSegError, match="could not start the inference process .*no-python"):
        missing.process(volume, parameters=SegmentationParameters(model=str(foregroundBundle)))
    assert not missing.isRunning()

    # Exit 0 with a valid segmentation but a report the module cannot read (a bug, not a user
    # mistake): the run fails with the reason in one line, once, instead of an exception escaping
    # every poll of the widget's timer.
    from GTVAutoSegLib.image import Image
    from GTVAutoSegLib.segfile import write_seg_nrrd

    written = writeVolume(volume, tmp_path / "written.nrrd")
    grid = Image.from_sitk(sitk.ReadImage(str(written)))
    write_seg_nrrd(grid.with_array(np.zeros(grid.array.shape, np.uint8)), tmp_path / "empty.seg.nrrd")
    report = json.dumps({"slice_probabilities": ["not", "a", "number", "!", "?"], "threshold": 0.5})
    logic = SegmentationLogic(scene, processFactory=lambda args, env: _ExitedProcess(args, 0, {
        "target_report.json": report, "target.seg.nrrd": (tmp_path / "empty.seg.nrrd").read_bytes()}))
    finished, lines = [], []
    run = logic.process(volume, parameters=SegmentationParameters(model=str(foregroundBundle)),
                        waitForCompletion=False, onFinished=finished.append, onLog=lines.append)
    assert logic.poll() is False
    assert run.status == RunStatus.FAILED and finished == [run] and "\n" not in run.message
    assert run.message == "reading the result failed (ValueError: could not convert string to float: 'not')"
    assert "gtvautoseg: warning: something worth knowing" in lines and lines[-1] == run.message
    assert not logic.isRunning() and scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert set(Path(tempfile.gettempdir()).glob("GTVAutoSeg-*")) == before
