"""The module logic's DICOM SEG / RTSTRUCT export (issue 13) against real MRML (slicer-core): a
real DICOM CT loaded, segmented through the CLI, edited, exported, read back by highdicom and our
pydicom rasteriser, and checked by dciodvfy."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")

from GTVAutoSegSlicerLib import GTVAutoSegError, SegmentationLogic, SegmentationParameters  # noqa: E402
from GTVAutoSegSlicerLib import testing  # noqa: E402
from GTVAutoSegSlicerLib.dicomexport import volumeGridImage  # noqa: E402
from GTVAutoSegSlicerLib.nodes import loadVolume, replaceSegmentSlices, segmentArray  # noqa: E402

from GTVAutoSegLib.io import read_image  # noqa: E402

from dicomreadback import dciodvfy_report, rasterise_rtstruct, seg_by_highdicom, voxel_positions  # noqa: E402


@pytest.fixture(scope="module")
def segmented(shared_data, tmp_path_factory):
    """The 3-slice DICOM CT loaded from its folder and segmented by the "foreground" test bundle."""
    work = tmp_path_factory.mktemp("slicer_dicom")
    folder = work / "ct3"
    shutil.copytree(shared_data / "dicom" / "dcmqi_ct3", folder)
    model = testing.makeBundle(work / "fg.pt", "foreground", anatomicRegion="lung")
    scene, keep = testing.newScene()
    volume = loadVolume(scene, folder)
    logic = SegmentationLogic(scene)
    run = logic.process(volume, parameters=SegmentationParameters(model=str(model), device="cpu",
                                                                  createSurface=False))
    return scene, keep, logic, volume, run.segmentationNode, folder


def _segmentId(node):
    return node.GetSegmentation().GetNthSegmentID(0)


def test_one_call_exports_the_edited_segment_as_seg_and_rtstruct_on_the_series(segmented, tmp_path):
    scene, _, logic, volume, node, folder = segmented
    ct = read_image(folder)
    # The volume node holds the series' grid, and the export starts from the node, edits included:
    # a reviewer empties slice 2 in Slicer before exporting.
    assert volumeGridImage(volume, np.zeros(ct.array.shape, np.uint8)).same_grid(ct)
    replaceSegmentSlices(node, _segmentId(node), volume, np.zeros(ct.array.shape, np.uint8), [2])
    expected = segmentArray(node, _segmentId(node), volume)
    assert expected[:2].sum() > 1000 and expected[2].sum() == 0

    written = logic.exportDicom(node, tmp_path / "dicom", name="case1")

    assert [p.name for p in written] == ["case1_seg.dcm", "case1_rtstruct.dcm"]
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == ["case1_rtstruct.dcm", "case1_seg.dcm"]
    read, seg = seg_by_highdicom(tmp_path / "dicom" / "case1_seg.dcm")
    assert voxel_positions(read) == voxel_positions(ct.with_array(expected))
    assert seg.SegmentSequence[0].SegmentLabel == "GTV"
    assert seg.SegmentSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Lung"
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("test-foreground", "0.0.1")
    filled, referenced, rt = rasterise_rtstruct(tmp_path / "dicom" / "case1_rtstruct.dcm", ct)
    assert np.array_equal(filled, expected) and set(referenced) == {0, 1}
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.source.frame_of_reference_uid
    for path in written:
        assert dciodvfy_report(path)[0] == []


def test_a_volume_not_loaded_from_dicom_needs_the_folder(segmented, tmp_path):
    scene, _, logic, volume, node, folder = segmented
    nifti = tmp_path / "ct.nii.gz"
    # The same CT as NIfTI, y axis flipped as converters write it.
    sitk.WriteImage(sitk.Flip(read_image(folder).to_sitk(), [False, True, False]), str(nifti))
    other = loadVolume(scene, nifti, "from nifti")
    model = node.GetAttribute("GTVAutoSeg.modelSource")
    run = logic.process(other, parameters=SegmentationParameters(model=model, device="cpu", createSurface=False))
    with pytest.raises(GTVAutoSegError, match="was not loaded from a DICOM series"):
        logic.exportDicom(run.segmentationNode, tmp_path / "a")
    written = logic.exportDicom(run.segmentationNode, tmp_path / "b", formats=["rtstruct"], dicomFolder=folder)
    assert [p.name for p in written] == ["from_nifti_GTV_rtstruct.dcm"]
    filled, _, _ = rasterise_rtstruct(written[0], read_image(folder))
    mine = segmentArray(run.segmentationNode, _segmentId(run.segmentationNode), other)
    assert voxel_positions(read_image(folder).with_array(filled)) == voxel_positions(volumeGridImage(other, mine))


def test_refusals_are_one_line_and_leave_no_file(segmented, shared_data, tmp_path):
    _, _, logic, _, node, _ = segmented
    deidentified = tmp_path / "ct20"
    shutil.copytree(shared_data / "dicom" / "totalseg_ct20", deidentified)
    for kwargs, message in (({"dicomFolder": deidentified}, "has no StudyInstanceUID"),
                            ({"formats": ["nrrd"]}, "DICOM export writes seg and/or rtstruct"),
                            ({"dicomFolder": tmp_path / "nowhere"}, "does not exist")):
        out = tmp_path / "out"
        with pytest.raises(GTVAutoSegError, match=message) as e:
            logic.exportDicom(node, out, **kwargs)
        assert "\n" not in str(e.value)
        assert not out.exists() or list(out.iterdir()) == []
