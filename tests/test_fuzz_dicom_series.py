"""The atheris target over the DICOM series reader (``benchmarks/fuzz_dicom_series.py``): a short
seeded run in CI (a fixed seed and number of runs), its oracle shown to fail on a wrong image, and the
inputs it found, kept as regression tests."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz_dicom_series as fuzz  # noqa: E402
from fuzzing import seeded_run  # noqa: E402

from GTVAutoSegLib.errors import GTVError  # noqa: E402
from GTVAutoSegLib.io import read_image  # noqa: E402

SEEDS = fuzz.seeds()
SEED_IDS = ["signed", "unsigned-12-bit-rescaled", "fractional-slope", "rle", "jpeg2000"]


def test_a_short_fuzzing_run_finds_no_crash(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = seeded_run(ROOT / "benchmarks" / "fuzz_dicom_series.py", corpus, runs=3000, rss_limit_mb=3072, timeout_s=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done" in r.stderr and "runs in" in r.stderr
    assert len(list(corpus.iterdir())) >= len(SEEDS)  # it started from the seeds


@pytest.mark.parametrize("data", SEEDS, ids=SEED_IDS)
def test_seeds_read_as_the_four_slices_they_hold(data):
    fuzz.check_one(data)
    image = read_image(fuzz._WORK / "series")
    assert image.array.shape == ((4, 8, 8) if data is SEEDS[SEED_IDS.index("jpeg2000")] else (4, 5, 6))
    assert image.spacing == (0.8, 0.75, 2.5) and image.origin == (-10.0, -12.5, 40.0)


def _read_seed(k: int = 0):
    fuzz.check_one(SEEDS[k])
    folder = fuzz._WORK / "series"
    return read_image(folder), folder


@pytest.mark.parametrize("wrong", ["reversed", "one-voxel-off", "shifted-origin", "spacing"])
def test_the_oracle_fails_on_an_image_that_is_not_the_files(wrong):
    image, folder = _read_seed()
    fuzz._same_as_gdcm(image, folder)  # the image as read passes
    array = np.array(image.array)
    if wrong == "reversed":
        bad = image.with_array(array[::-1].copy())
    elif wrong == "one-voxel-off":
        array[2, 3, 4] += 1
        bad = image.with_array(array)
    elif wrong == "shifted-origin":
        bad = replace(image, origin=(image.origin[0], image.origin[1], image.origin[2] + 2.5))
    else:
        bad = replace(image, spacing=(image.spacing[0], image.spacing[1], 2.0))
    with pytest.raises(AssertionError):
        fuzz._same_as_gdcm(bad, folder)


def _with_unknown_vr(data: bytes) -> bytes:
    """The seed with PatientID's VR (explicit little endian ``LO``) made an unknown one in its
    second file, as the fuzzer found it."""
    files = data.split(fuzz.SEPARATOR)
    tag = b"\x10\x00\x20\x00LO"
    assert tag in files[1]
    files[1] = files[1].replace(tag, b"\x10\x00\x20\x00L\xb7", 1)
    return fuzz.SEPARATOR.join(files)


def test_an_element_with_an_unknown_vr_is_refused_naming_the_file():
    # Found by the fuzzer: pydicom decodes an element when it is first used, and the series'
    # PatientID (read last, for the DICOM export) raised NotImplementedError from deep inside. Also
    # found: a file GDCM would not read at all, with an unknown VR in an element the reader does not
    # use, was read. An element whose explicit VR is none of the standard's is damage either way.
    data = _with_unknown_vr(SEEDS[0])
    fuzz.check_one(data)  # a one-line GTVError is an allowed outcome
    with pytest.raises(GTVError, match=r"^01\.dcm is a damaged DICOM file \(element \(0010,0020\) has no valid "
                                       r"value representation\)$"):
        read_image(fuzz._WORK / "series")


def test_an_invalid_number_of_frames_is_refused_in_one_line(tmp_path):
    import pydicom

    folder = _copy_seed(tmp_path)
    path = folder / "02.dcm"
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 9
    ds.save_as(path)
    element = b"\x28\x00\x08\x00IS\x02\x009 "  # (0028,0008) IS, 2 bytes: "9 "
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:-2] + b"x "))  # not a number (pydicom cannot set it)
    with pytest.raises(GTVError) as e:
        read_image(folder)
    message = str(e.value)
    assert "\n" not in message
    assert message == "02.dcm has an invalid NumberOfFrames ('x')"


def _copy_seed(tmp_path, k: int = 0) -> Path:
    fuzz.check_one(SEEDS[k])
    target = tmp_path / "series"
    target.mkdir(parents=True)
    for p in (fuzz._WORK / "series").iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def _as_secondary_capture(path: Path, out: Path, own_series: bool) -> None:
    """A scanner's protocol or dose page: Modality CT, Secondary Capture, no patient geometry."""
    import pydicom
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if own_series:
        ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(out)


def test_a_secondary_capture_with_modality_ct_beside_the_series_is_left_out(tmp_path, recwarn):
    # Found through the fuzzer's oracle (GDCM took no pixel spacing from a file whose SOP class UID
    # it had mutated): such a file was read as a slice, and one without patient geometry (a dose
    # report or protocol page, Modality CT) made the whole folder be refused.
    folder = _copy_seed(tmp_path)
    _as_secondary_capture(folder / "00.dcm", folder / "zz_protocol.dcm", own_series=True)
    image = read_image(folder)
    assert image.array.shape == (4, 5, 6)
    assert not [w for w in recwarn if "not CT images" in str(w.message)]


def test_a_secondary_capture_under_the_series_uid_is_left_out_with_a_warning(tmp_path):
    folder = _copy_seed(tmp_path)
    _as_secondary_capture(folder / "03.dcm", folder / "03.dcm", own_series=False)  # the last slice
    with pytest.warns(UserWarning, match=r"also holds 1 object\(s\) of Modality CT that are not CT images \(03\.dcm\)"):
        image = read_image(folder)
    assert image.array.shape == (3, 5, 6)


def test_only_secondary_captures_are_named_when_no_series_is_left(tmp_path):
    folder = _copy_seed(tmp_path)
    for p in sorted(folder.iterdir()):
        _as_secondary_capture(p, p, own_series=False)
    with pytest.raises(GTVError, match=r"no DICOM CT image series found .*CT objects of SOP class Secondary Capture Image Storage"):
        read_image(folder)


def test_an_rle_slice_with_a_damaged_header_is_refused_not_a_crash(tmp_path):
    # Found by the fuzzer: GDCM, which decoded every compressed slice, crashed the process (a
    # segmentation fault) on an RLE header claiming 131,074 segments. RLE is pydicom's to decode
    # now, which refuses that header. The read runs in a subprocess so a regression fails here.
    import pydicom

    folder = _copy_seed(tmp_path, SEED_IDS.index("rle"))
    path = folder / "01.dcm"
    ds = pydicom.dcmread(path)
    data = bytearray(ds.PixelData)
    # the basic offset table's item, then the frame's item, whose value starts with the RLE header
    assert data[:4] == b"\xfe\xff\x00\xe0"
    frame = 8 + int.from_bytes(data[4:8], "little")
    assert data[frame:frame + 4] == b"\xfe\xff\x00\xe0"
    header = frame + 8
    assert int.from_bytes(data[header:header + 4], "little") == 2  # two segments: a 16-bit value's two bytes
    data[header:header + 4] = (131074).to_bytes(4, "little")
    ds.PixelData = bytes(data)
    ds.save_as(path)
    code = ("import sys; from GTVAutoSegLib.io import read_image; from GTVAutoSegLib.errors import GTVError\n"
            "try:\n    read_image(sys.argv[1])\nexcept GTVError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip() == ("01.dcm: pixel data is damaged or cut short "
                                "(pydicom: The RLE header specifies an invalid number of segments (131074))")


def test_pixel_data_in_a_transfer_syntax_no_decoder_here_knows_is_refused(tmp_path):
    folder = _copy_seed(tmp_path)
    path = folder / "02.dcm"
    data = path.read_bytes()
    explicit_le = b"1.2.840.10008.1.2.1\x00"  # padded to an even length: 20 bytes
    assert data.count(explicit_le) == 1
    path.write_bytes(data.replace(explicit_le, b"1.2.840.10008.1.2.99"))  # 20 bytes too (pydicom would refuse to write it)
    with pytest.raises(GTVError, match=r"^02\.dcm: pixel data in transfer syntax '1\.2\.840\.10008\.1\.2\.99', "
                                       r"which this reader does not decode$"):
        read_image(folder)


def test_an_unknown_vr_in_an_element_the_reader_does_not_use_is_refused_too():
    files = SEEDS[0].split(fuzz.SEPARATOR)
    tag = b"\x20\x00\x13\x00IS"  # InstanceNumber: never read (slices are ordered by position)
    assert tag in files[0]
    files[0] = files[0].replace(tag, b"\x20\x00\x13\x00TV", 1)
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^00\.dcm is a damaged DICOM file \(element \(0020,0013\) has no valid "
                                       r"value representation\)$"):
        read_image(fuzz._WORK / "series")


@pytest.mark.parametrize("change, message", [
    ("columns", r"^00\.dcm: pixel data does not match its header \(The pixel data is 60 bytes long, which indicates "
                r"it contains 10 bytes of excess padding to be removed\)$"),
    ("rle-segment", r"^01\.dcm: pixel data does not match its header \(The decoded RLE segment contains "
                    r"non-conformant padding - 3[1-9] vs\. 30 bytes expected\)$"),
])
def test_pixel_data_longer_than_its_header_says_is_refused(tmp_path, change, message):
    # Found through the fuzzer (an RLE slice GDCM would not decode, pydicom decoded with a warning):
    # pydicom reads what the header asks for and warns of the rest. A slice whose Columns says 5 of
    # its 6 was read sheared, every value plausible.
    import pydicom

    folder = _copy_seed(tmp_path, SEED_IDS.index("rle") if change == "rle-segment" else 0)
    path = folder / "01.dcm"
    ds = pydicom.dcmread(path)
    if change == "columns":
        for p in folder.iterdir():  # every slice alike: the series stays one size
            other = pydicom.dcmread(p)
            other.Columns = 5
            other.save_as(p)
    else:
        data = bytearray(ds.PixelData)
        frame = 8 + int.from_bytes(data[4:8], "little") + 8  # the frame's value: RLE header, then segments
        first = frame + int.from_bytes(data[frame + 4:frame + 8], "little")  # the first segment
        assert data[first] < 128  # a literal run: n + 1 bytes follow
        # a longer first literal run: the segment decodes to more than its 30 bytes
        data[first] += 1
        ds.PixelData = bytes(data)
        ds.save_as(path)
    with pytest.raises(GTVError, match=message):
        read_image(folder)


@pytest.mark.parametrize("damage, message", [
    ("tag", r"element \(0010,0020\) follows \(0010,0090\)"),
    ("trailing", r"element \(0040,2E31\) follows \(7FE0,0010\)"),
])
def test_elements_out_of_tag_order_are_refused(damage, message):
    # Found by the fuzzer: a damaged tag (PatientName's read as (0010,0090)) and bytes after the
    # pixel data read as one more element; pydicom read both files, GDCM neither.
    files = SEEDS[2].split(fuzz.SEPARATOR)
    if damage == "tag":
        assert b"\x10\x00\x10\x00PN" in files[1]
        files[1] = files[1].replace(b"\x10\x00\x10\x00PN", b"\x10\x00\x90\x00PN", 1)
    else:
        files[1] += b"\x40\x00\x31\x2eLO\x02\x00AB"
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^01\.dcm is a damaged DICOM file \(" + message +
                       r"; elements must come once each, in ascending tag order\)$"):
        read_image(fuzz._WORK / "series")


def test_compressed_pixel_data_with_bytes_after_its_last_fragment_is_refused(tmp_path):
    # Found by the fuzzer: RLE pixel data whose undefined length (0xFFFFFFFF) became a defined one of
    # 4.29 GB, so the value runs to the end of the file and holds the sequence delimiter after the
    # frame. pydicom decoded the frame; GDCM allocated 4.3 GB for the file, even only to read its
    # header (the fuzzer's oracle no longer gives RLE files to GDCM; the reader gives it JPEG ones,
    # checked the same way first).
    folder = _copy_seed(tmp_path, SEED_IDS.index("rle"))
    path = folder / "00.dcm"
    data = path.read_bytes()
    header = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"  # (7FE0,0010) OB, undefined length
    assert data.count(header) == 1
    path.write_bytes(data.replace(header, header[:-4] + b"\xff\xff\xbf\xff"))
    with pytest.raises(GTVError, match=r"^00\.dcm: compressed pixel data is damaged \(a sequence delimiter where item 3 should start, 8 bytes "
                       r"after its last fragment\)$"):
        read_image(folder)


def test_compressed_pixel_data_cut_inside_a_fragment_is_refused():
    files = SEEDS[SEED_IDS.index("rle")].split(fuzz.SEPARATOR)
    cut = files[1][:-30]  # the file ends 30 bytes early: inside the frame's fragment (the delimiter is 8)
    files[1] = cut
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^01\.dcm is a damaged DICOM file \(cut short\)$"):
        read_image(fuzz._WORK / "series")


def _set_photometric(folder: Path, names, value: str) -> None:
    import pydicom

    for name in names:
        ds = pydicom.dcmread(folder / name)
        ds.PhotometricInterpretation = value
        ds.save_as(folder / name)


def test_a_series_of_mixed_photometric_interpretations_is_refused(tmp_path):
    # Found through the fuzzer's oracle: one slice's MONOCHROME2 had become MONOCHROME1, which GDCM
    # inverts (ITK's display convention) and the reader did not notice.
    folder = _copy_seed(tmp_path)
    _set_photometric(folder, ["01.dcm"], "MONOCHROME1")
    with pytest.raises(GTVError, match=r"^slice 01\.dcm is MONOCHROME1, 00\.dcm MONOCHROME2; one series needs one "
                                       r"photometric interpretation$"):
        read_image(folder)


def test_a_monochrome1_series_reads_as_the_rescaled_stored_values(tmp_path):
    # The standard's HU are the rescale of the stored values whatever the photometric interpretation
    # (which says how to display them); GDCM would give them inverted.
    reference = read_image(_copy_seed(tmp_path / "a"))
    folder = _copy_seed(tmp_path / "b")
    _set_photometric(folder, [p.name for p in folder.iterdir()], "MONOCHROME1")
    image = read_image(folder)
    assert np.array_equal(image.array, reference.array)


def test_a_palette_color_slice_is_refused(tmp_path):
    folder = _copy_seed(tmp_path)
    _set_photometric(folder, ["02.dcm"], "PALETTE COLOR")
    with pytest.raises(GTVError, match=r"^02\.dcm has photometric interpretation PALETTE COLOR; a CT slice is "
                                       r"MONOCHROME1 or MONOCHROME2$"):
        read_image(folder)


def test_a_damaged_value_shown_in_a_message_keeps_it_one_line():
    # Found by the fuzzer: a Modality holding a line break (and NULs) was shown as it was in "no
    # DICOM CT image series found ... (found ... objects)".
    files = SEEDS[0].split(fuzz.SEPARATOR)
    element = b"\x08\x00\x60\x00CS\x02\x00CT"  # (0008,0060) CS "CT"
    assert all(element in f for f in files)
    files = [f.replace(element, b"\x08\x00\x60\x00CS\x04\x00C\nTT", 1) for f in files]
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^no DICOM CT image series found in folder .* \(found C\?TT objects\)$"):
        read_image(fuzz._WORK / "series")


def test_a_file_meta_sop_instance_uid_that_is_no_uid_is_refused(tmp_path):
    # Found by the fuzzer: with the dataset's SOPInstanceUID blank (as some de-identifiers leave it)
    # the reader takes the file meta header's, which here had become a list of numbers (its VR UI
    # read as US); setting it raised TypeError from inside pydicom.
    import pydicom

    folder = _copy_seed(tmp_path)
    path = folder / "01.dcm"
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ""
    ds.save_as(path)
    data = path.read_bytes()
    element = b"\x02\x00\x03\x00UI"  # (0002,0003) MediaStorageSOPInstanceUID, explicit VR UI
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, b"\x02\x00\x03\x00US"))
    with pytest.raises(GTVError, match=r"^01\.dcm is a damaged DICOM file \(its file meta header: TypeError\)$"):
        read_image(folder)


def test_an_empty_compressed_pixel_data_element_is_refused():
    # Found by the fuzzer: an RLE slice whose pixel data element has no value (pydicom: None).
    files = SEEDS[SEED_IDS.index("rle")].split(fuzz.SEPARATOR)
    start = files[2].index(b"\xe0\x7f\x10\x00OB\x00\x00")  # (7FE0,0010) OB, then its 4-byte length
    files[2] = files[2][:start] + b"\xe0\x7f\x10\x00OB\x00\x00\x00\x00\x00\x00"  # a length of 0, the end
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^02\.dcm: compressed pixel data is damaged \(no fragment after the offset table\)$"):
        read_image(fuzz._WORK / "series")


@pytest.mark.parametrize("change, message", [
    ({"HighBit": None, "BitsStored": 15}, "has no HighBit"),
    ({"HighBit": 15, "BitsStored": 15}, "has a pixel format no CT slice has (bits allocated 16, stored 15, high bit 15, "
                                        "pixel representation 1)"),
    ({"BitsAllocated": 12}, "has a pixel format no CT slice has (bits allocated 12, stored 16, high bit 15, "
                            "pixel representation 1)"),
    ({"SamplesPerPixel": 3}, "has 3 samples per pixel; a CT slice has one value per pixel"),
])
def test_a_slice_whose_pixel_format_readers_part_ways_on_is_refused(tmp_path, change, message):
    # Found by the fuzzer: 15 bits stored and no HighBit, which pydicom read as the stored values
    # and GDCM as values near 0.
    import pydicom

    folder = _copy_seed(tmp_path)
    ds = pydicom.dcmread(folder / "01.dcm")
    for keyword, value in change.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(folder / "01.dcm")
    with pytest.raises(GTVError) as e:
        read_image(folder)
    assert str(e.value) == f"01.dcm {message}"


def test_a_repeated_element_is_refused():
    # Found by the fuzzer: Rows and Columns repeated (Columns 1, then 6). pydicom keeps the last of
    # a repeated element, GDCM the first: the same file was a 5 x 6 slice to one, 5 x 1 to the other.
    files = SEEDS[0].split(fuzz.SEPARATOR)
    rows = files[1].index(b"\x28\x00\x10\x00US\x02\x00")  # (0028,0010) Rows, then (0028,0011) Columns
    first = files[1][rows:rows + 20]
    assert first[10:18] == b"\x28\x00\x11\x00US\x02\x00"
    one_column = first[:18] + (1).to_bytes(2, "little")
    files[1] = files[1][:rows] + one_column + files[1][rows:]  # Rows, Columns 1, Rows, Columns 6
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^01\.dcm is a damaged DICOM file \(element \(0028,0010\) follows \(0028,0011\); "
                                       r"elements must come once each, in ascending tag order\)$"):
        read_image(fuzz._WORK / "series")


def test_an_element_written_twice_in_a_row_is_named_as_such():
    files = SEEDS[0].split(fuzz.SEPARATOR)
    element = b"\x28\x00\x30\x00DS\x08\x000.75\\0.8"  # (0028,0030) PixelSpacing
    assert element in files[3]
    files[3] = files[3].replace(element, element + b"\x28\x00\x30\x00DS\x08\x000.80\\0.8", 1)
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^03\.dcm is a damaged DICOM file \(element \(0028,0030\) appears twice; "
                                       r"elements must come once each, in ascending tag order\)$"):
        read_image(fuzz._WORK / "series")


def test_a_sequence_delimiter_with_a_length_is_refused():
    # Found by the fuzzer: the delimiter after a JPEG 2000 slice's items with a length of 0xFFFFFF00
    # (4 bytes inserted). pydicom does not look at it; GDCM took 8 s and 4.3 GB to read the slice.
    files = SEEDS[SEED_IDS.index("jpeg2000")].split(fuzz.SEPARATOR)
    end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert files[0].endswith(end)
    files[0] = files[0][:-4] + b"\x00\xff\xff\xff\xff\x00\x00\x00"
    fuzz.check_one(fuzz.SEPARATOR.join(files))
    with pytest.raises(GTVError, match=r"^00\.dcm: compressed pixel data is damaged \(no sequence delimiter \(FFFE,E0DD\) "
                                       r"of length 0 after it: the bytes there are feffdde000ffffff\)$"):
        read_image(fuzz._WORK / "series")


def test_a_jpeg_2000_stream_of_another_size_than_its_header_is_refused(tmp_path):
    import pydicom

    folder = _copy_seed(tmp_path, SEED_IDS.index("jpeg2000"))
    for p in folder.iterdir():  # every slice alike: the series stays one size
        ds = pydicom.dcmread(p)
        ds.Columns = 7  # the streams are 8 x 8
        ds.save_as(p)
    with pytest.raises(GTVError, match=r"^00\.dcm: compressed pixel data is damaged \(its stream is 8x8 with 1 "
                                       r"component\(s\), its header 7x8 with 1\)$"):
        read_image(folder)


def test_the_stream_size_readers():
    from GTVAutoSegLib.dicomchecks import j2k_size as _j2k_size, jpeg_size as _jpeg_size

    siz = (b"\xff\x4f\xff\x51\x00\x29\x00\x00" + (520).to_bytes(4, "big") + (530).to_bytes(4, "big")
           + (8).to_bytes(4, "big") + (18).to_bytes(4, "big") + bytes(16) + (1).to_bytes(2, "big") + b"\x8f\x01\x01")
    assert _j2k_size(siz) == (512, 512, 1)
    assert _j2k_size(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(20) + b"jp2c" + siz) == (512, 512, 1)
    assert _j2k_size(b"\xff\xd8" + siz) is None
    dqt = b"\xff\xdb\x00\x43" + bytes(65)
    sof = b"\xff\xc3\x00\x0b\x10" + (400).to_bytes(2, "big") + (512).to_bytes(2, "big") + b"\x01\x01\x11\x00"
    assert _jpeg_size(b"\xff\xd8" + dqt + sof) == (512, 400, 1)
    assert _jpeg_size(b"\xff\xd8" + dqt + b"\xff\xf7" + sof[2:]) == (512, 400, 1)  # JPEG-LS's SOF55
    assert _jpeg_size(b"\xff\xd8" + b"\xff\xda\x00\x08" + bytes(6) + sof) is None  # scan before frame
    assert _jpeg_size(siz) is None


def test_a_compressed_monochrome1_slice_is_refused(tmp_path):
    # Found through the fuzzer's oracle: GDCM inverts a MONOCHROME1 slice's values (-1000 became
    # 999), which the reader took as they came for JPEG 2000, while it keeps the standard's HU for
    # uncompressed and RLE slices.
    folder = _copy_seed(tmp_path, SEED_IDS.index("jpeg2000"))
    _set_photometric(folder, [p.name for p in folder.iterdir()], "MONOCHROME1")
    with pytest.raises(GTVError, match=r"^00\.dcm is a compressed MONOCHROME1 slice, which GDCM decodes inverted"):
        read_image(folder)


def test_a_slice_written_without_the_dicom_file_header_is_named_when_left_out(tmp_path):
    # A data set without the preamble and "DICM" (some old exports write them) is not read; at an end
    # of the stack it would go missing without a gap in the spacing, so the reader says so.
    import pydicom

    folder = _copy_seed(tmp_path)
    path = folder / "03.dcm"  # the last slice
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(path, ds, enforce_file_format=False, implicit_vr=False, little_endian=True)
    assert path.read_bytes()[:2] == b"\x08\x00"
    with pytest.warns(UserWarning, match=r"left out 1 file\(s\) that look like DICOM data sets without the DICOM file "
                                         r"header \('DICM' at byte 128\): 03\.dcm$"):
        image = read_image(folder)
    assert image.array.shape == (3, 5, 6)


def _wrong_group_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, 4 bytes
    data[140:144] = (int.from_bytes(data[140:144], "little") - 8).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def test_a_wrong_file_meta_group_length_neither_refuses_a_slice_nor_hides_damage(tmp_path):
    # pydicom reads past the meta group by its elements, not by (0002,0000), which some writers leave
    # wrong; the reader's check of the elements' order does the same (by the group length it began
    # 8 bytes early here, read the meta group's last value as an element and saw nothing after it).
    reference = read_image(_copy_seed(tmp_path / "a"))
    folder = _copy_seed(tmp_path / "b")
    for path in folder.iterdir():
        _wrong_group_length(path)
    assert np.array_equal(read_image(folder).array, reference.array)
    path = folder / "03.dcm"
    element = b"\x28\x00\x30\x00DS\x08\x000.75\\0.8"  # (0028,0030) PixelSpacing, then written again
    path.write_bytes(path.read_bytes().replace(element, element + b"\x28\x00\x30\x00DS\x08\x000.80\\0.8", 1))
    with pytest.raises(GTVError, match=r"^03\.dcm is a damaged DICOM file \(element \(0028,0030\) appears twice"):
        read_image(folder)
