"""The headless batch script, run as a user runs it (a separate process), under plain Python with
slicer-core: three phantom CTs, one of them corrupt."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "GTVAutoSeg" / "Resources" / "Scripts" / "batch_segment.py"
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

pytest.importorskip("slicer", reason="slicer-core is not installed")

from GTVAutoSegSlicerLib import testing  # noqa: E402


@pytest.fixture(scope="module")
def foregroundBundle(tmp_path_factory) -> Path:
    return testing.makeBundle(tmp_path_factory.mktemp("bundles") / "fg.pt", "foreground", anatomicRegion="head_and_neck")


def test_batch_goes_on_after_a_corrupt_case_and_exits_nonzero(foregroundBundle, tmp_path):
    from GTVAutoSegLib.phantom import make_phantom

    cases = tmp_path / "cases"
    cases.mkdir()
    phantoms = {}
    for seed, name in ((1, "case_a"), (2, "case_c")):
        ct, _ = make_phantom(shape=(4, 40, 40), spacing=(2.0, 2.0, 3.0), seed=seed, tumour_slices=2,
                             origin=(10.0 * seed, -5.0, 20.0))
        sitk.WriteImage(ct.to_sitk(), str(cases / f"{name}.nrrd"))
        phantoms[name] = ct
    # case_b: a real NRRD header whose voxel data stops early (a truncated copy).
    intact = (cases / "case_a.nrrd").read_bytes()
    header = intact.index(b"\n\n") + 2
    (cases / "case_b.nrrd").write_bytes(intact[: header + 100])
    (cases / "notes.txt").write_text("not a CT")  # ignored: not a CT file name
    out = tmp_path / "out"

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(cases), "--output", str(out),
         "--model", str(foregroundBundle), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["case_a.seg.nrrd", "case_c.seg.nrrd"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    with open(out / "summary.csv", newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["case_a", "case_b", "case_c"]
    assert rows["case_b"]["status"] == "failed"
    assert "case_b.nrrd" in rows["case_b"]["error"]
    assert rows["case_b"]["segmentation"] == ""
    assert "case_b" in proc.stderr and "FAILED" in proc.stdout
    for name in ("case_a", "case_c"):
        assert rows[name]["status"] == "ok" and rows[name]["error"] == ""
        assert rows[name]["segmentation"] == f"{name}.seg.nrrd"
        assert int(rows[name]["slices_total"]) == 4 and int(rows[name]["slices_segmented"]) == 4
        assert float(rows[name]["volume_cc"]) > 0

        # Each file is a one-segment Slicer segmentation on its CT's physical grid.
        import slicerio

        seg = slicerio.read_segmentation(str(out / f"{name}.seg.nrrd"))
        assert [s["name"] for s in seg["segments"]] == ["GTV"]
        terminology = seg["segments"][0]["terminology"]
        assert terminology["type"][1] == "228791009"  # GTV, DICOM CID 9534
        assert rows[name]["target"] == "GTV"
        assert terminology["anatomicRegion"][1] == "774007"  # the bundle's head and neck
        ct = phantoms[name]
        voxels = slicerio.segment_mask(seg, seg["segments"][0]["id"])
        ijkToLps = np.asarray(seg["ijkToLPS"], dtype=float)
        ones = np.argwhere(voxels > 0)
        lps = (np.c_[ones, np.ones(len(ones))] @ ijkToLps.T)[:, :3]
        image = ct.to_sitk()
        index = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in lps])
        assert np.allclose(index, np.round(index), atol=1e-4)
        assert (index.min(axis=0) >= -1e-4).all() and (index.max(axis=0) <= np.array([39, 39, 3]) + 1e-4).all()
        volumeCc = len(ones) * float(np.prod(ct.spacing)) / 1000.0
        assert float(rows[name]["volume_cc"]) == pytest.approx(volumeCc, rel=1e-3)


def test_batch_usage_errors_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no CT here")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--input", str(empty), "--output", str(tmp_path / "o"),
                           "--device", "tpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--device" in proc.stderr


def test_batch_keeps_left_handed_grids_and_refuses_a_truncated_nifti_quietly(foregroundBundle, tmp_path):
    """Issue 12 items 17, 1 and 13: Slicer's writer stored a flipped/oblique CT's slice axis reversed;
    a truncated NIfTI was segmented "ok"; a corrupt NRRD filled the log with ~30 VTK lines."""
    from GTVAutoSegLib.io import read_image
    from GTVAutoSegLib.phantom import make_phantom

    cases = tmp_path / "cases"
    cases.mkdir()
    c, s = np.cos(0.3), np.sin(0.3)
    grids = {"zflip": (1, 0, 0, 0, 1, 0, 0, 0, -1), "tiltflip": (1, 0, 0, 0, c, s, 0, s, -c)}
    for seed, (name, direction) in enumerate(grids.items()):
        ct, _ = make_phantom(shape=(4, 40, 40), spacing=(2.0, 2.0, 3.0), seed=seed, tumour_slices=2,
                             origin=(5.0, -5.0, 20.0), direction=direction)
        sitk.WriteImage(ct.to_sitk(), str(cases / f"{name}.nrrd"))
    sitk.WriteImage(ct.to_sitk(), str(cases / "cut.nii.gz"))
    data = (cases / "cut.nii.gz").read_bytes()
    (cases / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    (cases / "bad.nrrd").write_bytes((cases / "zflip.nrrd").read_bytes()[:400])
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(cases), "--output", str(out),
         "--model", str(foregroundBundle), "--device", "cpu"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.glob("*.seg.nrrd")) == ["tiltflip.seg.nrrd", "zflip.seg.nrrd"]
    for name in grids:
        ct, seg = read_image(cases / f"{name}.nrrd"), read_image(out / f"{name}.seg.nrrd")
        assert seg.array.shape == ct.array.shape
        assert seg.origin == ct.origin and seg.spacing == ct.spacing
        assert np.allclose(seg.direction, ct.direction, atol=1e-12)
        assert seg.array[ct.array > -500].any()  # the foreground model's box lies on the body
    # One line per failed case on stderr, nothing else.
    assert sorted(line.split(":")[1].strip() for line in proc.stderr.strip().splitlines()) == ["bad", "cut"]
    assert "truncated" in proc.stderr


def test_batch_writes_seg_and_rtstruct_for_a_dicom_series_and_refuses_them_for_a_nrrd(
        foregroundBundle, shared_data, tmp_path):
    import shutil

    from GTVAutoSegLib.io import read_image, read_mask
    from GTVAutoSegLib.phantom import make_phantom

    from dicomreadback import dciodvfy_report, rasterise_rtstruct, seg_by_highdicom, voxel_positions

    series = tmp_path / "ct3"
    shutil.copytree(shared_data / "dicom" / "dcmqi_ct3", series)
    ct, _ = make_phantom(shape=(4, 40, 40), spacing=(2.0, 2.0, 3.0), seed=1, tumour_slices=2)
    nrrd = tmp_path / "phantom.nrrd"
    sitk.WriteImage(ct.to_sitk(), str(nrrd))
    out = tmp_path / "out"

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(series), str(nrrd), "--output", str(out),
         "--model", str(foregroundBundle), "--device", "cpu", "--format", "nrrd,seg,rtstruct"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ct3.seg.nrrd", "ct3_rtstruct.dcm", "ct3_seg.dcm", "summary.csv"]
    with open(out / "summary.csv", newline="") as f:
        rows = {row["case"]: row for row in csv.DictReader(f)}
    assert rows["ct3"]["status"] == "ok" and rows["ct3"]["dicom"] == "ct3_seg.dcm ct3_rtstruct.dcm"
    assert rows["phantom"]["status"] == "failed" and "is not a DICOM series" in rows["phantom"]["error"]
    source = read_image(series)
    result = read_mask(out / "ct3.seg.nrrd")
    assert result.same_grid(source) and result.array.sum() > 0
    read, _ = seg_by_highdicom(out / "ct3_seg.dcm")
    assert voxel_positions(read) == voxel_positions(result)
    filled, _, _ = rasterise_rtstruct(out / "ct3_rtstruct.dcm", source)
    assert np.array_equal(filled, result.array)
    for name in ("ct3_seg.dcm", "ct3_rtstruct.dcm"):
        assert dciodvfy_report(out / name)[0] == []
