"""The atheris target over the image and bundle readers: a few seconds of coverage-guided fuzzing in
CI (a fixed seed and number of runs rather than a time limit: a busy CI machine runs the same inputs
as a quiet one; two runs here reached one of two corpora, not one per run), and the inputs it (or its
property-based sibling) found, kept as regression tests."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz_readers  # noqa: E402
from fuzzing import seeded_run  # noqa: E402

pytest.importorskip("atheris", reason="atheris is not installed")


def test_a_short_fuzzing_run_finds_no_crash(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    r = seeded_run(ROOT / "benchmarks" / "fuzz_readers.py", corpus, runs=15000, rss_limit_mb=4096, timeout_s=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Done" in r.stderr and "runs in" in r.stderr
    # it started from the seeds (an empty corpus folder is seeded; a check that was always true once
    # left the fuzzer on random bytes, which never reach a reader's voxels)
    assert len(list(corpus.iterdir())) >= len(fuzz_readers.seeds())


@pytest.mark.parametrize("data", fuzz_readers.seeds(), ids=[*fuzz_readers.KINDS[:4], ".nrrd-raw"])
def test_seeds_read(data):
    fuzz_readers.check_one(data)


@pytest.mark.parametrize(
    "data",
    [
        # A .nii cut inside its voxels read as zeros (the NIfTI check took vox_offset 0 from nibabel's
        # in-memory header copy); found by tests/test_properties.py.
        b"\x00" + bytes(352) + b"\x01" * 8,
        # Random bytes as a model were called "pickled code".
        b"\x05" + bytes(range(256)) * 8,
        # A header-only NIfTI name holding a truncated gzip stream.
        b"\x01\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03",
        # A .nii.gz whose header gives a negative dimension: the full check asked gzip for a negative
        # number of bytes (a ValueError traceback).
        bytes.fromhex(
            "011f8b08000000000000038b6164200214313033b030303630323042212a60611000d30df6a8181d6c704612e5621860"
            "c088e20fb0bb1aa01844ed4796441383f2e1fa30409eb621985ef1f7f6a8181d6c704612e762171860c088e20fb0bb1a"
            "571844ed4796441383f2e1fa30409eb621985ef1f7f6a8181d6c704612e762171860c088e20fb0bb1aa01844ed479644"
            "1383e51fdb7f8bff59ffe7fc3f8c13180f317e61546302004074050590010000"),
        # A .nii.gz cut right after its 352-byte header, vox_offset 90,112: the CRC proof read up to
        # vox_offset and hit the stream's end (an EOFError traceback).
        bytes.fromhex(
            "011f8b08000000800000038b6164200214313033b030303330313042212a60611000d30d2ea8181d6c704712e7621860"
            "c088e20fb0bb1aa01844ed4796441383f2e1fa30409eb621985e"),
        # A .nii.gz whose vox_offset reads as 2.9e31: the full check asked gzip for more bytes than
        # an index holds (an OverflowError traceback).
        bytes.fromhex(
            "011f8b08000000010000038b6164200214313033b030303330313042212a60611000d30df6a8181d6c2f4612e3621860"
            "c088e20fb0bb1aa01844ed4796441383f2e1fa30409eb62198f1f7f6a8181d6c4612621860c088e20f1387f2e100fa40"
            "30ffff"),
        # A MetaImage DimSize with a superscript two, a digit to str.isdigit() but not to int().
        b"\x03ObjectType = Image\nNDims = 3\nDimSize = 4 3 \xc2\xb2\nElementType = MET_SHORT\n"
        b"ElementDataFile = LOCAL\n" + bytes(48),
    ],
    ids=["nii-cut-in-voxels", "random-model", "cut-gzip-header", "nii-negative-dimension", "nii-cut-before-vox-offset",
         "nii-huge-vox-offset", "mha-superscript-dimsize"],
)
def test_found_inputs_stay_fixed(data):
    fuzz_readers.check_one(data)


def test_a_nrrd_header_holding_binary_bytes_is_refused(tmp_path):
    # Found by the fuzzer (2026-12-01): a raw NRRD whose "space origin" line ran on with NUL bytes
    # before the blank line; ITK started the voxels 10 bytes before this reader did (its own header
    # parsing), so the two read different images. A header is text: such a file is refused.
    from GTVAutoSegLib.errors import GTVError
    from GTVAutoSegLib.io import read_image

    header = (b"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 3 2\n"
              b"space directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\nendian: little\n"
              b"encoding: raw\nspace origin: (0,0,0)\x00\\\x01" + bytes(12) + b"\n\n")
    path = tmp_path / "binary_header.nrrd"
    path.write_bytes(header + bytes(48))
    fuzz_readers.check_one(bytes([fuzz_readers.KINDS.index(".nrrd")]) + path.read_bytes())
    with pytest.raises(GTVError, match=r"^binary_header\.nrrd is not a readable image \(its NRRD header holds the byte "
                                       r"0x00 at offset \d+: a damaged header\)$"):
        read_image(path)


# Found by the fuzzer (the files as it found them): SimpleITK 2.5.3's ReadImageInformation never
# returns for these headers. A NIfTI sform with a NaN offset beside a zero-length axis:
_NAN_SFORM_NII = (
    "eNqLYWQgAhQxMDOwADETAyMUIoENzkA5ATCzwR4VowOgUoQ4F8MAA1R/gN3VAMZQYW0kSSi1H5UP0/fn////qGbnaRuC6RV/"
    "b/3l+Wf3r+Dfon9X/rH9t/if9X/O/3NA1UYMKQzTGE4w/GLQYYxjnMB4iPELoxoTAF6YJ+c=")
# A MetaImage whose NDims has 70 digits:
_HUGE_NDIMS_MHA = b'ObjectType = Image\nNDims = 111111111111111111111111111111111111111111111111111111111111111111113\nBa a=TB icalOrien\x10tatioen\xff\xff\xff\xffcing = 1 1 1\nDimSize = 4 3 2\nElementType = MET_SHORT\nElementDataFile =DICM LOCAL\n\xa8\xda\xfd\x0c\xfe>\x00p'


# A MetaImage with a negative NDims first and a valid one later:
_TWO_NDIMS_MHA = b"t\xf3\xf3\xf3\xf3= age\nNDims = -3\nyDa= \nTransformMatrix = 0 = 1 1 1\nDimSize= 4 3 2\nElementType = MET_SHORT\nEl\x03Objec\x02NRRD\n\n Image\nNDims = 3\nBa a=TB icalOrien\x10tatioen'\xff\xff\xffcinementDataFil\x01\x00\x00\x00\x00\x00\x00\x00g = 1 1 1\nDimSize=  4 3 2\nElementType = MET_SHORT\nElementDataFel i<DICM LO\xff\xff\xff\xff\xff\xff\x00\xe0"


@pytest.mark.parametrize("name, message", [("hangs_itk.nii", "damaged sform"), ("hangs_itk.mha", "NDims"),
                                           ("hangs_itk_too.mha", "NDims = '-3'")])
def test_a_header_that_hangs_itk_is_refused_before_itk_reads_it(tmp_path, name, message):
    """The read runs in a subprocess so that a regression fails here instead of hanging the suite."""
    import base64
    import zlib

    path = tmp_path / name
    blobs = {"hangs_itk.mha": _HUGE_NDIMS_MHA, "hangs_itk_too.mha": _TWO_NDIMS_MHA}
    path.write_bytes(zlib.decompress(base64.b64decode(_NAN_SFORM_NII)) if name.endswith(".nii") else blobs[name])
    code = ("import sys; from GTVAutoSegLib.io import read_image; from GTVAutoSegLib.errors import GTVError\n"
            "try:\n    read_image(sys.argv[1])\nexcept GTVError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and message in r.stdout, (r.stdout, r.stderr[-2000:])
