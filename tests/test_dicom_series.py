"""DICOM series read slice by slice (issue 12, items 2-4): real fixtures copied into tmp_path and
damaged there, never in ../shared/data or the repository."""

import shutil

import numpy as np
import pydicom
import pytest

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.io import read_image


@pytest.fixture
def series(shared_data, tmp_path):
    """A private copy of the real 20-slice CT series (2 mm slices), files in name order."""
    folder = tmp_path / "ct20"
    shutil.copytree(shared_data / "dicom" / "totalseg_ct20", folder)
    return folder


@pytest.fixture
def plain(shared_data, tmp_path):
    """A private copy of the 3-slice uncompressed GE series."""
    folder = tmp_path / "ct3"
    shutil.copytree(shared_data / "dicom" / "dcmqi_ct3", folder)
    return folder


def _sorted_files(folder):
    files = [p for p in folder.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _message(folder) -> str:
    with pytest.raises(GTVError) as e:
        read_image(folder)
    text = str(e.value)
    assert text and "\n" not in text
    return text


def test_the_clean_series_reads_as_20_slices_at_2_mm_with_its_uids(series):
    ct = read_image(series)
    assert ct.array.shape == (20, 512, 512)
    assert ct.spacing[2] == pytest.approx(2.0)
    assert ct.source is not None and len(ct.source.sop_instance_uids) == 20
    # SOP instances in array order: ascending position along the normal.
    z = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in _sorted_files(series)]
    # De-identification blanked SOPInstanceUID in the datasets; the file meta header keeps it (and must
    # equal it), so the UIDs come from there.
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in _sorted_files(series)} == {""}
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)
            for p in _sorted_files(series)]
    assert all(uids) and ct.source.sop_instance_uids == tuple(uids) and ct.origin[2] == pytest.approx(min(z))
    # A mask of the result keeps them (with_array), for a DICOM SEG export later.
    assert ct.with_array(ct.array > 0).source is ct.source


def test_a_duplicated_slice_is_refused_naming_both_files(series):
    victim = _sorted_files(series)[7]
    shutil.copy(victim, series / "zz_copy.dcm")
    text = _message(series)
    assert "duplicated slice position" in text and victim.name in text and "zz_copy.dcm" in text


def test_a_missing_slice_is_refused_as_uneven_spacing(series):
    files = _sorted_files(series)
    files[10].unlink()
    text = _message(series)
    assert "uneven slice spacing" in text and "4 mm" in text and "missing" in text
    assert files[9].name in text and files[11].name in text


def test_a_slice_in_another_orientation_is_refused(plain):
    victim = _sorted_files(plain)[1]
    ds = pydicom.dcmread(victim)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal
    ds.save_as(victim)
    text = _message(plain)
    assert "another orientation" in text and victim.name in text


def test_gantry_tilt_is_refused_naming_the_positions(plain):
    for k, path in enumerate(_sorted_files(plain)):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.3 * k, z]  # each slice shifted: steps leave the normal
        ds.save_as(path)
    text = _message(plain)
    assert "gantry tilt" in text and "degrees" in text


def test_order_comes_from_positions_not_file_names_or_instance_numbers(plain, tmp_path):
    clean = read_image(plain)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    for k, path in enumerate(reversed(_sorted_files(plain))):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = 7  # useless numbers on purpose
        ds.save_as(shuffled / f"{k:02d}.dcm")
    ct = read_image(shuffled)
    assert np.array_equal(ct.array, clean.array) and ct.same_grid(clean)


def test_localizer_is_left_out_and_another_series_is_named(plain, tmp_path):
    scout = _sorted_files(plain)[0]
    ds = pydicom.dcmread(scout)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImagePositionPatient = [0, 0, 500]
    ds.save_as(plain / "scout.dcm")
    assert read_image(plain).array.shape[0] == 3  # the scout is not a 4th slice
    other = pydicom.dcmread(_sorted_files(plain)[1])
    other.SeriesInstanceUID = "1.2.3.4.5"
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.save_as(plain / "other_series.dcm")
    with pytest.warns(UserWarning, match=r"skipping 1\.2\.3\.4\.5 \(1 slices\)"):
        assert read_image(plain).array.shape[0] == 3


def test_a_cut_off_uncompressed_slice_is_refused_not_zero_filled(plain):
    victim = _sorted_files(plain)[2]
    victim.write_bytes(victim.read_bytes()[:300_000])
    text = _message(plain)
    assert victim.name in text and "cut short" in text


def test_a_cut_off_jpeg2000_slice_is_refused_in_one_line(series, capfd):
    victim = _sorted_files(series)[5]
    victim.write_bytes(victim.read_bytes()[:100_000])
    text = _message(series)
    assert victim.name in text
    assert capfd.readouterr().err == ""  # GDCM's own complaint does not reach the terminal


def test_one_file_of_the_series_reads_the_whole_series(plain):
    assert read_image(_sorted_files(plain)[1]).array.shape[0] == 3


def test_a_fifo_in_the_folder_is_skipped_not_waited_on(plain):
    import os

    os.mkfifo(plain / "pipe.dcm")
    assert read_image(plain).array.shape[0] == 3


def test_a_localizer_in_another_orientation_is_left_out_not_refused(plain):
    """Scouts are often coronal; marked LOCALIZER, one is left out before orientations are compared
    (unmarked, it would be refused as a slice in another orientation: see above)."""
    ds = pydicom.dcmread(_sorted_files(plain)[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(plain / "scout.dcm")
    ct = read_image(plain)
    assert ct.array.shape[0] == 3 and ds.SOPInstanceUID not in ct.source.sop_instance_uids


def test_series_headers_follow_the_array_order_and_notice_a_vanished_slice(plain):
    from GTVAutoSegLib.dicomseries import series_headers

    ct = read_image(plain)
    headers = series_headers(ct.source)
    assert [h.SOPInstanceUID for h in headers] == list(ct.source.sop_instance_uids)
    assert all("PixelData" not in h for h in headers)
    _sorted_files(plain)[1].unlink()
    with pytest.raises(GTVError, match="no longer holds 1 of the 3 slices"):
        series_headers(ct.source)
