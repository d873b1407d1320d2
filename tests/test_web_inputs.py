"""The web app's gate: which hosts it listens on, and what it does with uploads before any reader
sees them (size limit, zipped DICOM series, the server-side data folder). No browser here; the
click paths are in test_web_app.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegWeb.inputs import (
    ZIP_EXPANSION_LIMIT,
    DataFolder,
    read_ct_file,
    safe_file_name,
    save_stream,
    unpack_dicom_zip,
    upload_case_name,
)
from GTVAutoSegWeb.server import check_host, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_flag(host):
    assert is_loopback(host)
    assert check_host(host, 8080, allow_remote=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org"])
def test_other_interfaces_are_refused_without_the_flag(host):
    assert not is_loopback(host)
    with pytest.raises(GTVError, match="--allow-remote"):
        check_host(host, 8080, allow_remote=False)
    warning = check_host(host, 8080, allow_remote=True)
    assert "no authentication" in warning and host in warning


def test_serve_on_another_interface_exits_2_in_one_line():
    done = subprocess.run([sys.executable, "-m", "GTVAutoSegLib.cli", "serve", "--host", "0.0.0.0", "--port", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gtvautoseg: error: refusing to listen on 0.0.0.0")


def test_upload_names_cannot_leave_the_upload_folder():
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\x\\..\\ct scan.nii.gz") == "ct_scan.nii.gz"
    assert safe_file_name(".bashrc") == "bashrc"
    assert safe_file_name("") == "upload"
    assert upload_case_name("pt_201.nii.gz") == "pt_201"
    assert upload_case_name("series.zip") == "series"


async def _chunks(*parts: bytes):
    for part in parts:
        yield part


def test_uploads_over_the_limit_are_refused_and_removed(tmp_path):
    target = tmp_path / "ct.nii.gz"
    # announced too large: refused before reading anything
    with pytest.raises(GTVError, match="over the upload limit of 0 MiB"):
        asyncio.run(save_stream(_chunks(b"x"), target, 100, declared=101))
    # not announced (chunked): refused once the stream passes the limit, nothing left behind
    with pytest.raises(GTVError, match="more than"):
        asyncio.run(save_stream(_chunks(b"a" * 60, b"b" * 60), target, 100, declared=None))
    assert not target.exists()
    with pytest.raises(GTVError, match="empty file"):
        asyncio.run(save_stream(_chunks(), target, 100, declared=0))
    assert asyncio.run(save_stream(_chunks(b"a" * 60, b"b" * 40), target, 100, declared=100)) == 100
    assert target.read_bytes() == b"a" * 60 + b"b" * 40


def test_zip_members_are_unpacked_flat_whatever_their_names(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../outside.dcm", b"one")
        zf.writestr("/abs/path.dcm", b"two")
        zf.writestr("sub/dir/three.dcm", b"three")
    folder = unpack_dicom_zip(archive, tmp_path / "out" / "dicom", 10_000)
    assert sorted(p.name for p in folder.iterdir()) == ["00000_outside.dcm", "00001_path.dcm", "00002_three.dcm"]
    assert all(p.parent == folder for p in folder.rglob("*"))
    assert not (tmp_path / "outside.dcm").exists()


def test_zip_bombs_and_broken_archives_are_refused(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (ZIP_EXPANSION_LIMIT * 1000 + 1))
    with pytest.raises(GTVError, match="unpacks to more than"):
        unpack_dicom_zip(bomb, tmp_path / "bomb", 1000)
    assert not (tmp_path / "bomb").exists()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(bomb.read_bytes()[:40])
    with pytest.raises(GTVError, match="not a readable zip archive"):
        unpack_dicom_zip(broken, tmp_path / "broken", 10**6)


def test_a_zipped_dicom_series_reads_as_the_cli_reads_its_folder(tmp_path, shared_data):
    from GTVAutoSegLib.io import read_ct

    series = shared_data / "dicom" / "totalseg_ct20"
    archive = tmp_path / "ct20.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.iterdir()):
            zf.write(f, f"nested/folder/{f.name}")
    loaded = read_ct_file(archive, "ct20", tmp_path / "work", 100 * 2**20)
    direct = read_ct(series)
    assert loaded.image.same_grid(direct) and (loaded.image.array == direct.array).all()


def test_the_data_folder_offers_only_what_it_listed(tmp_path):
    (tmp_path / "pt_1").mkdir()
    (tmp_path / "pt_1" / "ct.nii.gz").write_bytes(b"x")
    (tmp_path / "pt_1" / "ct.seg.nrrd").write_bytes(b"x")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "a.dcm").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "linked").symlink_to(tmp_path / "pt_1", target_is_directory=True)
    data = DataFolder(tmp_path)
    assert data.items() == ["linked/ct.nii.gz", "pt_1/ct.nii.gz", "series/"]
    assert data.path("pt_1/ct.nii.gz") == (tmp_path.resolve() / "pt_1" / "ct.nii.gz", "pt_1")
    for key in ("../secret.nii.gz", "/etc/passwd", "notes.txt", "pt_1/ct.seg.nrrd"):
        with pytest.raises(GTVError, match="not a CT in the server's data folder"):
            data.path(key)
    with pytest.raises(GTVError, match="not a folder"):
        DataFolder(tmp_path / "missing")
