"""Builds each case of ``bad_inputs.json`` in a folder: the damaged or odd input and the command line.

``build(case_id, folder, model, shared_data)`` returns a :class:`Case`: the ``gtvautoseg`` arguments
(without the program name), the output folder, and the input files whose SHA-256 must not change.
Used by ``tests/test_bad_input_table.py`` (in process, a stand-in model) and by
``bad_input_sweep.py`` (as a user runs it). Real DICOM is copied from ``../shared/data`` into
``folder`` and damaged there; nothing is ever written into the repository or the shared data.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TABLE = Path(__file__).resolve().with_name("bad_inputs.json")


def table() -> list[dict]:
    return json.loads(TABLE.read_text(encoding="utf-8"))["cases"]


@dataclass
class Case:
    argv: list[str]
    out: Path
    inputs: list[Path] = field(default_factory=list)
    reference_input: Path | None = None  # an accepted case's input, to check the output's grid


def phantom_ct(direction=None):
    """A 16 x 80 x 72 phantom CT (int16 HU) with a bright block on slices 6-9."""
    from GTVAutoSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=(16, 80, 72), spacing=(1.2, 0.9, 2.5), seed=3, direction=direction)
    arr = ct.array.copy()
    arr[6:10, 30:44, 28:40] = 2500
    return ct.with_array(arr)


def _write(image, path: Path) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image.to_sitk(), str(path))
    return path


def _array(array, path: Path, spacing=(1.0, 1.0, 1.0), vector=False) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array, isVector=vector)
    if not vector and array.ndim == 3:
        img.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _nifti_float(path: Path, value: float) -> Path:
    import nibabel as nib

    a = phantom_ct().array.astype(np.float32).transpose(2, 1, 0).copy()
    a[5, 5, 5] = value
    nib.save(nib.Nifti1Image(a, np.diag([1.2, 0.9, 2.5, 1.0])), str(path))
    return path


def _dicom_copy(shared: Path, folder: Path, name: str = "totalseg_ct20") -> Path:
    target = folder / "dicom"
    shutil.copytree(shared / "dicom" / name, target)
    return target


def _sorted_dicom(folder: Path) -> list[Path]:
    import pydicom

    files = [p for p in folder.iterdir() if p.is_file()]
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit_dicom(path: Path, **values) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _repeat_columns(path: Path) -> None:
    """Columns written twice (511, then the true 512), as the series fuzzer found it: pydicom keeps
    the last, GDCM the first."""
    data = path.read_bytes()
    tag = b"\x28\x00\x11\x00"  # (0028,0011) Columns
    at = data.index(tag)
    element = data[at:at + 10]  # tag, VR and 2-byte length (explicit) or 4-byte length (implicit), a 2-byte value
    first = element[:-2] + (511).to_bytes(2, "little")
    path.write_bytes(data[:at] + first + element + data[at + 10:])


def _dose_report_page(slice_path: Path, target: Path) -> None:
    """A scanner's dose report page: Modality CT, a Secondary Capture in its own series, no patient
    geometry (the reader once took any Modality CT object for a slice and refused the folder)."""
    import pydicom
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.dcmread(slice_path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(target)


def _bundle_with_region(model: Path, target: Path, region: str) -> Path:
    import torch

    payload = torch.load(model, weights_only=True)
    meta = json.loads(payload["meta_json"])
    meta["anatomic_region"] = region
    payload["meta_json"] = json.dumps(meta)
    torch.save(payload, target)
    return target


def _pickled_code(target: Path) -> Path:
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"format": "gtvautoseg-bundle", "x": Payload()}, target)
    return target


def build(case_id: str, folder: Path, model: Path, shared: Path | None) -> Case:
    """Make case ``case_id`` inside ``folder`` (empty, private to the case)."""
    folder = Path(folder)
    out = folder / "out"
    clean = folder / "in" / "ct.nii.gz"
    seg = ["segment"]
    extra: list[str] = []
    model_arg = str(model)
    inputs: list[Path] = []
    accepted_ref = None

    def ct_file(name="ct.nii.gz", image=None):
        return _write(image if image is not None else phantom_ct(), folder / "in" / name)

    c = case_id
    if c == "missing":
        inp = folder / "in" / "nowhere.nii.gz"
    elif c == "empty_file":
        inp = folder / "in" / "ct.nii.gz"
        inp.parent.mkdir(parents=True)
        inp.write_bytes(b"")
    elif c == "text_as_nifti":
        inp = folder / "in" / "notes.nii.gz"
        inp.parent.mkdir(parents=True)
        inp.write_text("this is not an image\n")
    elif c == "random_nrrd":
        inp = folder / "in" / "noise.nrrd"
        inp.parent.mkdir(parents=True)
        inp.write_bytes(np.random.default_rng(0).bytes(4096))
    elif c == "image_2d":
        inp = _array(np.zeros((32, 32), np.int16), folder / "in" / "slice.nrrd")
    elif c == "image_4d":
        import SimpleITK as sitk

        inp = folder / "in" / "series.nii.gz"
        inp.parent.mkdir(parents=True)
        sitk.WriteImage(sitk.Image([4, 4, 4, 3], sitk.sitkInt16), str(inp))
    elif c == "vector":
        inp = _array(np.zeros((4, 5, 6, 3), np.float32), folder / "in" / "rgb.nrrd", vector=True)
    elif c in ("truncated_nii_gz", "truncated_nii", "truncated_nrrd", "truncated_mha"):
        ext = {"truncated_nii_gz": ".nii.gz", "truncated_nii": ".nii", "truncated_nrrd": ".nrrd", "truncated_mha": ".mha"}[c]
        inp = ct_file("ct" + ext)
        data = inp.read_bytes()
        inp.write_bytes(data[: len(data) * 2 // 3])
    elif c == "gzip_nrrd_trailer":
        import SimpleITK as sitk

        inp = folder / "in" / "ct.nrrd"
        inp.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(phantom_ct().to_sitk(), str(inp), useCompression=True)
        inp.write_bytes(inp.read_bytes()[:-4])  # the gzip trailer (CRC and length), not voxels
    elif c == "truncated_openkbp":
        inp = folder / "in" / "pt_201" / "ct.nii.gz"
        inp.parent.mkdir(parents=True)
        inp.write_bytes((shared / "openkbp" / "validation" / "pt_201" / "ct.nii.gz").read_bytes()[:155_984])
    elif c == "corrupt_nii_gz":
        inp = ct_file()
        data = bytearray(inp.read_bytes())
        data[len(data) // 2] ^= 0x55
        inp.write_bytes(bytes(data))
    elif c == "mhd_without_raw":
        inp = ct_file("ct.mhd")
        inp.with_suffix(".raw").unlink()
    elif c == "huge_header":
        inp = folder / "in" / "huge.nhdr"
        inp.parent.mkdir(parents=True)
        inp.write_text("NRRD0004\ntype: short\ndimension: 3\nsizes: 5000 5000 5000\nendian: little\n"
                       "encoding: raw\ndata file: huge.raw\n")
        (folder / "in" / "huge.raw").write_bytes(b"\0" * 64)
    elif c == "nan_nrrd":
        a = phantom_ct().array.astype(np.float32)
        a[3, 4, 5] = np.nan
        inp = _array(a, folder / "in" / "nan.nrrd")
    elif c in ("nan_nifti", "inf_nifti"):
        (folder / "in").mkdir(parents=True)
        inp = _nifti_float(folder / "in" / "ct.nii.gz", np.nan if c == "nan_nifti" else np.inf)
    elif c == "sheared_nrrd":
        image = phantom_ct().to_sitk()
        image.SetDirection((1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        inp = folder / "in" / "shear.nrrd"
        inp.parent.mkdir(parents=True)
        import SimpleITK as sitk

        sitk.WriteImage(image, str(inp))
    elif c == "sheared_nifti":
        import nibabel as nib

        affine = np.array([[1.2, 0.3, 0, 0], [0, 0.9, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]])
        nii = nib.Nifti1Image(phantom_ct().array.transpose(2, 1, 0).copy(), affine)
        nii.set_qform(None, code=0)
        nii.set_sform(affine, code=1)
        inp = folder / "in" / "shear.nii.gz"
        inp.parent.mkdir(parents=True)
        nib.save(nii, str(inp))
    elif c == "nan_sform_nifti":  # found by fuzz_readers.py, byte for byte
        import base64
        import zlib

        inp = folder / "in" / "ct.nii"
        inp.parent.mkdir(parents=True)
        inp.write_bytes(zlib.decompress(base64.b64decode(
            "eNqLYWQgAhQxMDOwADETAyMUIoENzkA5ATCzwR4VowOgUoQ4F8MAA1R/gN3VAMZQYW0kSSi1H5UP0/fn////qGbnaRuC6RV/"
            "b/3l+Wf3r+Dfon9X/rH9t/if9X/O/3NA1UYMKQzTGE4w/GLQYYxjnMB4iPELoxoTAF6YJ+c=")))
    elif c == "huge_ndims_mha":  # found by fuzz_readers.py
        inp = folder / "in" / "ct.mha"
        inp.parent.mkdir(parents=True)
        inp.write_bytes(b"ObjectType = Image\nNDims = " + b"1" * 69 + b"3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
                        b"ElementDataFile = LOCAL\n" + bytes(48))
    elif c == "non_axial":
        inp = ct_file("ct.nrrd", phantom_ct((0, 0, -1, 1, 0, 0, 0, -1, 0)))
    elif c == "constant":
        inp = _array(np.full((8, 32, 32), -1024, np.int16), folder / "in" / "flat.nrrd")
    elif c == "all_air":
        air = np.random.default_rng(0).integers(-1024, -950, size=(8, 32, 32)).astype(np.int16)
        inp = _array(air, folder / "in" / "air.nrrd")
    elif c == "fifo":
        inp = folder / "in" / "ct.nii.gz"
        inp.parent.mkdir(parents=True)
        os.mkfifo(inp)
    elif c == "device":
        inp = Path("/dev/zero")
    elif c == "empty_folder":
        inp = folder / "in" / "empty"
        inp.mkdir(parents=True)
    elif c == "dicom_seg_only":  # needs shared data, as the table says
        inp = folder / "in" / "seg.dcm"
        inp.parent.mkdir(parents=True)
        shutil.copy(shared / "dicom" / "dcmqi_ct3_liver_seg.dcm", inp)
    elif c.startswith("dicom_"):
        inp = _dicom_copy(shared, folder / "in")
        files = _sorted_dicom(inp)
        if c == "dicom_duplicate":
            shutil.copy(files[7], inp / "zz_copy.dcm")
        elif c == "dicom_missing":
            files[10].unlink()
        elif c == "dicom_orientation":
            _edit_dicom(files[5], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
        elif c == "dicom_tilt":
            for k, path in enumerate(files):
                import pydicom

                x, y, z = (float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient)
                _edit_dicom(path, ImagePositionPatient=[x, y + 0.5 * k, z])
        elif c == "dicom_cut_slice":
            shutil.rmtree(inp)
            inp = _dicom_copy(shared, folder / "in", "dcmqi_ct3")
            victim = _sorted_dicom(inp)[1]
            victim.write_bytes(victim.read_bytes()[:300_000])
        elif c in ("dicom_columns_short", "dicom_repeated_element", "dicom_photometric_mix"):
            shutil.rmtree(inp)
            inp = _dicom_copy(shared, folder / "in", "dcmqi_ct3")
            files = _sorted_dicom(inp)
            if c == "dicom_columns_short":  # every slice alike, so the series is still one size
                for path in files:
                    _edit_dicom(path, Columns=511)
            elif c == "dicom_photometric_mix":
                _edit_dicom(files[1], PhotometricInterpretation="MONOCHROME1")
            else:
                _repeat_columns(files[1])
        elif c == "dicom_dose_report_beside":
            _dose_report_page(files[0], inp / "zz_dose_report.dcm")
            accepted_ref = inp
        elif c == "dicom_cut_jpeg2000":
            files[4].write_bytes(files[4].read_bytes()[:100_000])
        elif c == "dicom_shuffled":
            for k, path in enumerate(reversed(files)):
                _edit_dicom(path, InstanceNumber=7)
                path.rename(inp / f"{k:03d}.tmpname")
            for path in inp.iterdir():
                path.rename(path.with_suffix(".dcm"))
            accepted_ref = inp
        else:
            raise KeyError(c)
    elif c.startswith("threshold_"):
        inp = ct_file()
        value = {"threshold_nan": "nan", "threshold_inf": "inf", "threshold_2": "2", "threshold_negative": "-1"}[c]
        extra = [f"--threshold={value}"]
    elif c == "same_case_name":
        a = ct_file("a/pt_1/ct.nii.gz")
        b = ct_file("b/pt_1/ct.nii.gz")
        return Case(seg + [str(a), str(b), "-o", str(out), "--model", model_arg, "--device", "cpu",
                           "--progress", "none"], out, [a, b])
    elif c == "output_over_input":
        inp = ct_file("x_label.nii.gz")
        out = inp.parent
        extra = ["--name", "x"]
    elif c in ("evaluate_csv_over_input", "evaluate_csv_folder"):
        from GTVAutoSegLib import io

        ref = folder / "in" / "ref.nii.gz"
        ref.parent.mkdir(parents=True)
        ct = phantom_ct()
        io.write_labelmap(ct.with_array((ct.array > 2000).astype(np.uint8)), ref)
        csv = ref if c == "evaluate_csv_over_input" else folder / "in" / "csvdir"
        if c == "evaluate_csv_folder":
            csv.mkdir()
        return Case(["evaluate", str(ref), str(ref), "--csv", str(csv)], folder / "in", [ref])
    elif c == "name_parent":
        inp, extra = ct_file(), ["--name", "../../x"]
    elif c == "name_absolute":
        inp, extra = ct_file(), ["--name", str(folder / "abs")]
    elif c == "output_is_file":
        inp = ct_file()
        out = folder / "blocker"
        out.write_text("x")
    elif c == "output_under_file":
        inp = ct_file()
        (folder / "blocker").write_text("x")
        out = folder / "blocker" / "sub"
    elif c == "name_too_long":
        inp, extra = ct_file(), ["--name", "n" * 250]
    elif c.startswith("model_"):
        inp = ct_file()
        bad = folder / "model" / "m.pt"
        bad.parent.mkdir(parents=True)
        if c == "model_random":
            bad.write_bytes(np.random.default_rng(1).bytes(5000))
        elif c == "model_truncated":
            data = Path(model).read_bytes()
            bad.write_bytes(data[: len(data) // 2])
        elif c == "model_pickled_code":
            _pickled_code(bad)
        elif c == "model_folder":
            bad.mkdir()
        elif c == "model_region":
            _bundle_with_region(Path(model), bad, "head and neck")
        model_arg = str(bad)
        if bad.is_file():
            inputs.append(bad)
    elif c in ("oblique", "flipped", "permuted"):
        cs, sn = np.cos(0.3), np.sin(0.3)
        direction = {"oblique": (cs, -sn, 0, sn, cs, 0, 0, 0, 1), "flipped": (1, 0, 0, 0, 1, 0, 0, 0, -1),
                     "permuted": (0, 1, 0, 1, 0, 0, 0, 0, -1)}[c]
        inp = ct_file("ct.nrrd", phantom_ct(direction))
        accepted_ref = inp
    elif c == "one_slice_png":
        from GTVAutoSegLib.image import Image

        ct = phantom_ct()
        inp = _write(Image(ct.array[7:8], ct.spacing, ct.origin, ct.direction), folder / "in" / "one.nrrd")
        extra = ["--png"]
        accepted_ref = inp
    elif c == "name_240":
        inp, extra = ct_file(), ["--name", "n" * 240]
        accepted_ref = inp
    else:
        raise KeyError(f"no maker for case {case_id!r}")
    if inp.exists() and inp.is_file():
        inputs.append(inp)
    elif inp.is_dir():
        inputs += [p for p in inp.rglob("*") if p.is_file()]
    return Case(seg + [str(inp), "-o", str(out), "--model", model_arg, "--device", "cpu", "--progress", "none", *extra],
                out, inputs, accepted_ref)
