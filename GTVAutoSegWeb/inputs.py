"""CTs coming into the web app: uploads and the server-side data folder.

Everything is read by the CLI's own reader (``GTVAutoSegLib.io.read_ct``), so a bad file gets the
same one-line message in the page as ``gtvautoseg segment`` prints. Uploads are streamed to disk and
refused the moment they pass the size limit; a zipped DICOM series is unpacked into a flat folder
(member names never become paths, so a crafted archive cannot write outside it) with limits on its
unpacked size and number of files.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from GTVAutoSegLib.cli import case_name
from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.filetypes import IMAGE_SUFFIXES, SEGMENTATION_SUFFIX, image_suffix
from GTVAutoSegLib.image import Image

MIB = 1024 * 1024
ZIP_SUFFIX = ".zip"
# A zipped series may unpack to this many times the upload limit (DICOM compresses about 2-4x).
ZIP_EXPANSION_LIMIT = 8
ZIP_MAX_MEMBERS = 20000
# The data folder listing stops here (a folder of thousands of patients is searched by name in the page).
DATA_LIST_LIMIT = 5000
DATA_LIST_DEPTH = 4
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class LoadedCT:
    """A CT read by the CLI's reader, with what the reader warned about."""

    image: Image
    name: str  # the case name, used for the saved files
    warnings: list[str]


def safe_file_name(name: str) -> str:
    """A plain file name for an uploaded file: the last path part, odd characters replaced, the
    suffix kept (the readers choose the format by it)."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = _UNSAFE.sub("_", base).lstrip(".")[-120:]
    return base or "upload"


def upload_case_name(file_name: str) -> str:
    """The case name of an uploaded file, as the CLI names a case (``pt_201.nii.gz`` -> ``pt_201``)."""
    lower = file_name.lower()
    for suffix in (*IMAGE_SUFFIXES, ZIP_SUFFIX):
        if lower.endswith(suffix):
            return file_name[: -len(suffix)] or "case"
    return Path(file_name).stem or "case"


async def save_stream(chunks: AsyncIterator[bytes], target: Path, limit_bytes: int, declared: int | None) -> int:
    """Write an upload to ``target``, refusing it once it passes ``limit_bytes``.

    Args:
        chunks: the request body.
        target: the file to write (removed again when refused).
        limit_bytes: the largest upload accepted.
        declared: the Content-Length the browser announced, checked before anything is read.

    Returns:
        The number of bytes written.

    Raises:
        GTVError: the upload is larger than the limit, or empty.
    """
    if declared is not None and declared > limit_bytes:
        raise GTVError(_too_large(target.name, declared, limit_bytes))
    written = 0
    try:
        with open(target, "wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit_bytes:
                    raise GTVError(_too_large(target.name, written, limit_bytes, at_least=True))
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if written == 0:
        target.unlink(missing_ok=True)
        raise GTVError(f"{target.name} is an empty file")
    return written


def _too_large(name: str, size: int, limit: int, at_least: bool = False) -> str:
    more = "more than " if at_least else ""
    return (f"{name} is {more}{size / MIB:.1f} MiB, over the upload limit of {limit / MIB:.0f} MiB "
            "(gtvautoseg serve --max-upload-mb)")


def unpack_dicom_zip(archive: Path, folder: Path, limit_bytes: int) -> Path:
    """Unpack the files of a zipped DICOM series into ``folder`` (flat, numbered names).

    Raises:
        GTVError: not a zip archive, encrypted members, or more files / unpacked bytes than allowed.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > ZIP_MAX_MEMBERS:
                raise GTVError(f"{archive.name} holds {len(members)} files; at most {ZIP_MAX_MEMBERS} are unpacked")
            if any(m.flag_bits & 0x1 for m in members):
                raise GTVError(f"{archive.name} is encrypted; zip the DICOM files without a password")
            budget = ZIP_EXPANSION_LIMIT * limit_bytes
            folder.mkdir(parents=True, exist_ok=False)
            for i, member in enumerate(members):
                target = folder / f"{i:05d}_{safe_file_name(member.filename)}"
                with zf.open(member) as src, open(target, "wb") as dst:
                    while block := src.read(MIB):
                        budget -= len(block)
                        if budget < 0:
                            raise GTVError(f"{archive.name} unpacks to more than {ZIP_EXPANSION_LIMIT * limit_bytes / MIB:.0f} "
                                           "MiB; upload the series in a smaller archive")
                        dst.write(block)
    except zipfile.BadZipFile:
        shutil.rmtree(folder, ignore_errors=True)
        raise GTVError(f"{archive.name} is not a readable zip archive (truncated or corrupt file?)") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, RuntimeError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise GTVError(f"{archive.name} could not be unpacked ({type(exc).__name__}: {exc})") from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def read_ct_file(path: Path, name: str, work: Path, limit_bytes: int) -> LoadedCT:
    """Read an uploaded file or a data-folder entry with the CLI's reader.

    A ``.zip`` is unpacked into ``work`` first and read as a DICOM series folder. Runs in a worker
    thread; the reader's warnings are returned for the log instead of printed.
    """
    from GTVAutoSegLib.io import read_ct

    source = path
    if path.is_file() and path.name.lower().endswith(ZIP_SUFFIX):
        source = unpack_dicom_zip(path, work / "dicom", limit_bytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = read_ct(source)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return LoadedCT(image, name, messages)


class DataFolder:
    """The CTs under ``gtvautoseg serve --data DIR`` that the page offers: image files and folders
    holding ``.dcm`` files, as paths relative to DIR. Only listed entries can be opened."""

    def __init__(self, root: Path | None):
        self.root = root.resolve() if root is not None else None
        self.entries: dict[str, Path] = {}
        if self.root is not None:
            if not self.root.is_dir():
                raise GTVError(f"--data {root}: not a folder")
            self.entries = self._scan()

    def _scan(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        # Links are followed (patient folders are often linked in); the depth limit ends any loop.
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            here = Path(folder)
            depth = len(here.relative_to(self.root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < DATA_LIST_DEPTH else []
            if any(f.lower().endswith(".dcm") for f in files) and here != self.root:
                found[here.relative_to(self.root).as_posix() + "/"] = here
            for f in sorted(files):
                lower = f.lower()
                if image_suffix(lower) not in (None, SEGMENTATION_SUFFIX):
                    found[(here / f).relative_to(self.root).as_posix()] = here / f
            if len(found) >= DATA_LIST_LIMIT:
                break
        return dict(sorted(found.items())[:DATA_LIST_LIMIT])

    def items(self) -> list[str]:
        return list(self.entries)

    def path(self, key: str) -> tuple[Path, str]:
        """The entry's path and case name; ``GTVError`` for anything not listed."""
        if key not in self.entries:
            raise GTVError(f"{key!r} is not a CT in the server's data folder")
        path = self.entries[key]
        return path, case_name(path)
