"""The web app as a user clicks it, in a real headless Chromium (Debian's, driven by Playwright).

One ``gtvautoseg serve`` process on a free port on 127.0.0.1 serves the whole module; the tests run
in file order because, like the desktop module, the app holds one scene. Every number compared with
the command line comes from running ``gtvautoseg segment`` on the same file; every saved voxel is read
back from the server's output folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from GTVAutoSegLib import io

from GTVAutoSegWeb.browser import free_port, stop_server
from dicomreadback import rasterise_rtstruct, same_voxels_same_grid, seg_by_highdicom
from webpage import (
    CHROMIUM,
    OverlayFinder,
    browserArgs,
    childrenOf,
    segmentVoxels,
    waitFor,
)

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements.txt)")

PAGE_TIMEOUT_MS = 300_000  # the first page waits for slicer and trame to import on a busy 2-core machine
RUN_TIMEOUT_MS = 600_000
MAX_UPLOAD_MB = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory, shared_data):
    """``gtvautoseg serve`` with a data folder holding one OpenKBP patient (a symlink) and an output folder."""
    root = tmp_path_factory.mktemp("web")
    data, output = root / "data", root / "output"
    data.mkdir()
    (data / "pt_201").symlink_to(shared_data / "openkbp" / "validation" / "pt_201", target_is_directory=True)
    port = free_port()
    log = open(root / "server.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "GTVAutoSegLib.cli", "serve", "--port", str(port), "--data", str(data), "--output",
         str(output), "--max-upload-mb", str(MAX_UPLOAD_MB)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        waitFor(lambda: "GTVAutoSeg web app on" in (root / "server.log").read_text() or process.poll() is not None,
                PAGE_TIMEOUT_MS / 1000, "the server to start")
        assert process.poll() is None, (root / "server.log").read_text()[-3000:]
        yield {"url": f"http://127.0.0.1:{port}/", "process": process, "output": output, "root": root}
    finally:
        stop_server(process)
        log.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/setup_system.sh browser` (scripts/test.sh does)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=browserArgs())
        context = browser.new_context(viewport={"width": 1500, "height": 950}, accept_downloads=True)
        tab = context.new_page()
        tab.set_default_timeout(PAGE_TIMEOUT_MS)
        tab.goto(server["url"])
        tab.wait_for_selector("#gtv-upload", state="attached")
        yield tab
        browser.close()


def _cli(path: Path, out: Path, *extra: str) -> np.ndarray:
    """What ``gtvautoseg segment`` gives for the same file: its label map."""
    done = subprocess.run([sys.executable, "-m", "GTVAutoSegLib.cli", "segment", str(path), "-o", str(out),
                           "--progress", "none", "--name", "cli", *extra], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cli_label.nii.gz")))


def _upload(page, path: Path, expectInfo: str) -> None:
    page.set_input_files("#gtv-upload", str(path))
    page.wait_for_selector(f"#ct-info:has-text('{expectInfo}')")


def _segment(page) -> int:
    """Click Segment GTV, see it turn into Cancel, wait for the result; the voxel count the page shows."""
    page.click("#segment-button")
    page.wait_for_selector("#segment-button:has-text('Cancel')")
    page.wait_for_selector("#segment-info", timeout=RUN_TIMEOUT_MS)
    page.wait_for_selector("#segment-button:has-text('Segment GTV')")
    return segmentVoxels(page.inner_text("#segment-info"))


def _shownVoxels(page, predicate, what: str) -> int:
    """Wait until the voxel count in the page satisfies ``predicate``; return it."""
    found = {}

    def ready() -> bool:
        found["n"] = segmentVoxels(page.inner_text("#segment-info"))
        return predicate(found["n"])

    waitFor(ready, RUN_TIMEOUT_MS / 1000, what)
    return found["n"]


def test_zipped_dicom_series_segments_as_the_cli_does(page, server, shared_data, tmp_path):
    series = shared_data / "dicom" / "totalseg_ct20"
    archive = tmp_path / "totalseg_ct20.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"totalseg_ct20/{f.name}")
    _upload(page, archive, "512 x 512 x 20")
    assert page.is_visible("#view-axial") and page.is_visible("#view-3d")
    shown = _segment(page)
    assert "error" not in page.inner_text("#status").lower()
    reference = _cli(series, tmp_path / "cli")
    assert shown == int(reference.sum())
    assert "cli.seg.nrrd" not in page.inner_text("#log")  # the page's run is its own, in its own folder

    # This series was de-identified without its study UID: saved as .seg.nrrd and NIfTI, and the page
    # says why there is no DICOM SEG/RTSTRUCT (one cannot reference a series without it).
    page.click("#save-button")
    page.wait_for_selector("a.download-link:has-text('totalseg_ct20_label.nii.gz')")
    assert not page.is_visible("#error-alert")
    assert "no DICOM SEG/RTSTRUCT" in page.inner_text("#log") and "StudyInstanceUID" in page.inner_text("#status")
    assert sorted(p.name for p in server["output"].glob("totalseg_ct20*")) == [
        "totalseg_ct20.seg.nrrd", "totalseg_ct20_label.nii.gz"]
    saved = io.read_mask(server["output"] / "totalseg_ct20_label.nii.gz")
    assert saved.same_grid(io.read_image(series)) and int(saved.array.sum()) == shown


def test_a_dicom_series_is_saved_as_seg_and_rtstruct_referencing_it(page, server, shared_data, tmp_path):
    series = shared_data / "dicom" / "dcmqi_ct3"
    archive = tmp_path / "dcmqi_ct3.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"dcmqi_ct3/{f.name}")
    _upload(page, archive, "dcmqi_ct3: 512 x 512 x 3")
    shown = _segment(page)
    assert shown == int(_cli(series, tmp_path / "cli").sum())
    page.click("#save-button")
    page.wait_for_selector("a.download-link:has-text('dcmqi_ct3_rtstruct.dcm')")
    assert not page.is_visible("#error-alert")
    out = server["output"]
    ct = io.read_image(series)
    saved = io.read_mask(out / "dcmqi_ct3_label.nii.gz")
    assert saved.same_grid(ct) and int(saved.array.sum()) == shown
    read, seg = seg_by_highdicom(out / "dcmqi_ct3_seg.dcm")
    assert same_voxels_same_grid(read, saved)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.source.series_instance_uid
    filled, _, rt = rasterise_rtstruct(out / "dcmqi_ct3_rtstruct.dcm", ct)
    assert np.array_equal(filled, saved.array)
    assert rt.StructureSetROISequence[0].ROIName == "PTV70"
    with page.expect_download() as download:
        page.click("a.download-link:has-text('dcmqi_ct3_seg.dcm')")
    assert Path(download.value.path()).read_bytes() == (out / "dcmqi_ct3_seg.dcm").read_bytes()


def test_nifti_click_path_paint_erase_undo_save(page, server, shared_data, tmp_path):
    ct = shared_data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz"
    _upload(page, ct, "128 x 128 x 128")
    model = _segment(page)
    reference = _cli(ct, tmp_path / "cli")
    assert model == int(reference.sum()) > 0
    review = page.locator(".review-item")
    assert review.count() >= 1 and re.search(r"slice \d+: p = 0\.\d{3}", review.first.inner_text())

    view = page.locator("#view-axial").locator("xpath=..")
    finder = OverlayFinder(view)
    # Paint: hover, then drag a short stroke across tissue away from the contour.
    page.click("#effect-paint")
    finder.save(tmp_path / "axial_before_paint.png")
    paintAt = finder.tissueAwayFromOverlay(margin=16, dx=12)
    finder.stroke(page, paintAt, dx=12)
    painted = _shownVoxels(page, lambda n: n > model, "the paint stroke to add voxels")
    # Erase: a stroke through the contour's centre.
    page.click("#effect-erase")
    finder.stroke(page, finder.overlayCentre(), dx=16)
    erased = _shownVoxels(page, lambda n: n < painted, "the erase stroke to remove voxels")
    assert erased < painted
    page.click("#effect-none")
    page.click("#undo-button")
    assert _shownVoxels(page, lambda n: n != erased, "undo") == painted

    page.click("#save-button")
    page.wait_for_selector("a.download-link >> nth=1")
    saved = server["output"] / "ct_label.nii.gz"
    with page.expect_download() as download:
        page.click("a.download-link:has-text('ct_label.nii.gz')")
    assert Path(download.value.path()).read_bytes() == saved.read_bytes()

    # The saved file holds the model's voxels plus the painted stroke, on the CT's grid; the erase is undone.
    image = sitk.ReadImage(str(saved))
    original = sitk.ReadImage(str(ct))
    assert image.GetSize() == original.GetSize() and image.GetDirection() == original.GetDirection()
    assert np.allclose(image.GetOrigin(), original.GetOrigin()) and np.allclose(image.GetSpacing(), original.GetSpacing())
    mask = sitk.GetArrayFromImage(image)
    assert int(mask.sum()) == painted
    assert not np.any(reference & (1 - mask)), "a voxel of the model's contour is missing"
    added = np.argwhere(mask & (1 - reference))
    assert len(added) == painted - model
    assert len(set(added[:, 0])) == 1, "the cylinder brush paints one axial slice"
    assert reference[added[0, 0]].any(), "the stroke was painted on the slice shown, where the contour is"
    from GTVAutoSegLib.io import read_mask

    seg = read_mask(server["output"] / "ct.seg.nrrd", like=read_mask(saved))
    assert np.array_equal(seg.array, mask)


def test_cancel_leaves_no_segment_and_no_process(page, server, shared_data, tmp_path):
    ct = tmp_path / "pt_202.nii.gz"  # a name of its own, so the page visibly changes CT
    shutil.copyfile(shared_data / "openkbp" / "validation" / "pt_202" / "ct.nii.gz", ct)
    _upload(page, ct, "pt_202: 128 x 128 x")
    assert not page.is_visible("#segment-info")
    page.click("#segment-button")
    page.wait_for_selector("#segment-button:has-text('Cancel')")
    page.wait_for_selector("#log:has-text('GTVAutoSegLib.cli segment')")
    work = Path(re.findall(r"segment (\S+)/input\.nrrd", page.inner_text("#log"))[-1])
    waitFor(lambda: childrenOf(server["process"].pid), 60, "the inference process to start")
    page.click("#segment-button:has-text('Cancel')")
    page.wait_for_selector("#status:has-text('cancelled')")
    assert page.inner_text("#segment-button").strip().lower() == "segment gtv"
    assert not page.is_visible("#segment-info") and not page.is_visible("#save-button")
    waitFor(lambda: not childrenOf(server["process"].pid), 60, "the inference process tree to end")
    assert not work.exists()


def test_corrupt_upload_shows_the_cli_message_and_the_server_keeps_serving(page, server, shared_data, tmp_path):
    ct = shared_data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz"
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(ct.read_bytes()[:155_984])
    done = subprocess.run([sys.executable, "-m", "GTVAutoSegLib.cli", "segment", str(corrupt), "-o",
                           str(tmp_path / "out"), "--progress", "none"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    cliMessage = done.stderr.strip().removeprefix("gtvautoseg: error: ")
    page.set_input_files("#gtv-upload", str(corrupt))
    page.wait_for_selector("#error-alert")
    assert page.inner_text("#error-alert").strip() == cliMessage
    assert "\n" not in cliMessage and "truncated" in cliMessage

    too_big = tmp_path / "big.nii.gz"
    too_big.write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 2**20))
    page.set_input_files("#gtv-upload", str(too_big))
    page.wait_for_selector("#error-alert:has-text('over the upload limit')")

    # The same server, the next request: a CT from the server's data folder loads and segments.
    page.click("#data-select")
    page.click(".v-list-item:has-text('pt_201/ct.nii.gz')")
    page.wait_for_selector("#ct-info:has-text('pt_201: 128 x 128 x 128')")
    assert not page.is_visible("#error-alert")
    assert server["process"].poll() is None


def test_the_model_selector_runs_the_version_chosen(page, server, shared_data, tmp_path):
    """Both shipped versions share a name: the list shows each once, the card follows the choice,
    and a run uses exactly the version chosen (the same voxels as the CLI with that version)."""
    if "pt_201: 128 x 128 x 128" not in page.inner_text("#ct-info"):
        page.click("#data-select")
        page.click(".v-list-item:has-text('pt_201/ct.nii.gz')")
        page.wait_for_selector("#ct-info:has-text('pt_201: 128 x 128 x 128')")
    select = page.locator("#model-select").locator("xpath=ancestor::div[contains(@class, 'v-select')][1]")
    assert select.locator(".v-select__selection").count() == 1
    assert "(0.2.0)" in select.inner_text()
    page.click("text=Model card")
    page.wait_for_selector("#model-card:has-text('hcf-openkbp-ptv70 0.2.0')")
    select.locator(".v-field").click()  # where a user clicks: the field (its text covers the input)
    page.click(".v-list-item:has-text('(0.1.0)')")
    page.wait_for_selector("#model-card:has-text('hcf-openkbp-ptv70 0.1.0')")
    assert select.locator(".v-select__selection").count() == 1 and "(0.1.0)" in select.inner_text()
    shown = _segment(page)
    assert "hcf-openkbp-ptv70@0.1.0" in page.inner_text("#log")
    ct = shared_data / "openkbp" / "validation" / "pt_201" / "ct.nii.gz"
    assert shown == int(_cli(ct, tmp_path / "cli", "--model", "hcf-openkbp-ptv70@0.1.0").sum())
