"""The slice table (model-space slices of many patients) and its store: packed into small
checksummed parts, to train where the dataset is not.

The lowest room of the training data: :mod:`training.data` builds tables from datasets on disk and
reads packs through this module, which imports nothing of ``training/``.

The GPU machines this project borrows have no SimpleITK and take at most 64 MiB per call, the
tracked tree (about 49 MB with the shipped model) included. A pack is the training and validation
tables exactly as :func:`training.data.build_slice_table` makes them (lossless float16 slices),
lzma-compressed and cut into parts of at most ``--part-mib`` MiB, so that they can travel over
several calls and be trained on with nothing but torch, numpy and MONAI:

    python -m training.tablepack build --config training/configs/sanet_cr.json --size 96 --out carry/openkbp96
    python -m training.tablepack check carry/openkbp96
    python -m training.train --config training/configs/sanet_cr.json --size 96 --set data.pack=carry/openkbp96

A pack folder holds ``train/`` and ``val/``; each has ``pack.json`` (the preprocessing spec, patients,
spacings, array shapes, and every part's size and SHA-256) and ``part-NNN.xz``. Reading checks every
part before decompressing, and refuses a pack made with another preprocessing spec than the run's.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.preprocessing import PreprocessSpec

FORMAT = "gtvautoseg-slice-table-pack"
VERSION = 1
MANIFEST = "pack.json"
SIDES = ("train", "val")
# The table's arrays in stream order, with the dtype each must have.
_ARRAYS = (("images", np.float16), ("masks", np.uint8), ("patient", np.int32), ("slice_index", np.int32),
           ("tumour", np.bool_))
_CHUNK = 1 << 24  # bytes fed to the compressor at a time: bounded memory beside the table


@dataclass
class SliceTable:
    """Model-space slices of many patients, one row per axial slice.

    Attributes:
        images: ``(N, H, W)`` float16 in ``[0, 1]``.
        masks: ``(N, H, W)`` uint8 labels: 0/1, or with ``other_targets`` 0 background, 1 target,
            2 other target volumes.
        patient: ``(N,)`` int32, index into ``patients``.
        slice_index: ``(N,)`` int32, the model-space slice number within its patient.
        tumour: ``(N,)`` bool, the slice holds target on the original grid. A sliver of target can
            vanish when a slice is shrunk to model space; its slice still counts as tumour, because
            the cascade is scored on the original grid, where missing that slice is a miss.
        patients: patient ids.
        spacing: per patient, model-space ``(sx, sy, sz)`` mm (for 3D metrics).
    """

    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray
    slice_index: np.ndarray
    tumour: np.ndarray
    patients: list[str]
    spacing: list[tuple[float, float, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.tumour.size)

    def rows_of(self, patient_ids: list[str]) -> np.ndarray:
        """Row indices of the slices of these patients."""
        wanted = [self.patients.index(p) for p in patient_ids]
        return np.flatnonzero(np.isin(self.patient, wanted))

    def subset(self, patient_ids: list[str]) -> "SliceTable":
        """A table of only these patients (a copy)."""
        rows = self.rows_of(patient_ids)
        old = [self.patients.index(p) for p in patient_ids]
        remap = np.full(len(self.patients), -1, np.int32)
        remap[old] = np.arange(len(old), dtype=np.int32)
        return SliceTable(self.images[rows], self.masks[rows], remap[self.patient[rows]],
                          self.slice_index[rows], self.tumour[rows], list(patient_ids),
                          [self.spacing[i] for i in old] if self.spacing else [])

    @classmethod
    def concatenate(cls, parts: list[tuple]) -> "SliceTable":
        """From ``(patient, slices (Z, H, W), masks (Z, H, W), spacing[, flags (Z,)])`` per patient;
        without flags a slice is tumour where its model-space mask is not empty."""
        if not parts:
            raise GTVError("no cases to build a slice table from")
        images = np.concatenate([p[1].astype(np.float16, copy=False) for p in parts])
        masks = np.concatenate([p[2].astype(np.uint8, copy=False) for p in parts])
        patient = np.concatenate([np.full(p[1].shape[0], i, np.int32) for i, p in enumerate(parts)])
        slice_index = np.concatenate([np.arange(p[1].shape[0], dtype=np.int32) for p in parts])
        tumour = np.concatenate([p[4] if len(p) > 4 else p[2].reshape(p[2].shape[0], -1).any(1) for p in parts])
        tumour = tumour.astype(bool) | (masks == 1).reshape(masks.shape[0], -1).any(axis=1)
        return cls(images, masks, patient, slice_index, tumour, [p[0] for p in parts], [tuple(p[3]) for p in parts])


class _PartWriter:
    """Appends compressed bytes to ``part-NNN.xz`` files of at most ``limit`` bytes each."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.parts: list[dict] = []
        self._file = None

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._file is None or self._size == self.limit:
                self._open()
            take = min(len(view), self.limit - self._size)
            self._file.write(view[:take])
            self._hash.update(view[:take])
            self._size += take
            view = view[take:]

    def _open(self) -> None:
        self.close()
        name = f"part-{len(self.parts):03d}.xz"
        self._file, self._hash, self._size, self._name = open(self.folder / name, "wb"), hashlib.sha256(), 0, name

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts.append({"name": self._name, "bytes": self._size, "sha256": self._hash.hexdigest()})
            self._file = None


def write_pack(table: SliceTable, spec: PreprocessSpec, folder: str | Path, part_mib: float = 14.0,
               provenance: dict | None = None) -> dict:
    """Write one table as a pack in ``folder`` (created; must not exist). Returns the manifest.

    The parts are written into a temporary folder beside ``folder`` that is renamed at the end, so
    a killed run never leaves a pack that looks complete.
    """
    if part_mib <= 0:
        raise GTVError(f"part size must be positive, got {part_mib} MiB")
    folder = Path(folder)
    if folder.exists():
        raise GTVError(f"{folder} already exists; remove it or choose another --out")
    folder.parent.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.ascontiguousarray(getattr(table, name), dtype=dtype) for name, dtype in _ARRAYS}
    tmp = folder.parent / f".{folder.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        writer = _PartWriter(tmp, int(part_mib * 2**20))
        comp = lzma.LZMACompressor(preset=6)
        for arr in arrays.values():
            flat = arr.reshape(-1).view(np.uint8)
            for start in range(0, flat.size, _CHUNK):
                writer.write(comp.compress(flat[start:start + _CHUNK].tobytes()))
        writer.write(comp.flush())
        writer.close()
        manifest = {
            "format": FORMAT, "version": VERSION, "preprocess": spec.to_dict(),
            "patients": list(table.patients), "spacing": [list(map(float, s)) for s in table.spacing],
            "arrays": [{"name": n, "dtype": np.dtype(d).str, "shape": list(arrays[n].shape)} for n, d in _ARRAYS],
            "parts": writer.parts, "provenance": provenance or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise GTVError(f"{path} not found: not a slice-table pack (build one with python -m training.tablepack build)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GTVError(f"{path} is not a readable pack manifest: {exc}") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise GTVError(f"{path}: not a version-{VERSION} slice-table pack")
    return manifest


def check_pack(folder: str | Path) -> dict:
    """Every part present with its recorded size and SHA-256; returns the manifest, else one error
    naming every missing or damaged part."""
    folder = Path(folder)
    manifest = _manifest(folder)
    missing, damaged = [], []
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            missing.append(part["name"])
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if path.stat().st_size != part["bytes"] or digest.hexdigest() != part["sha256"]:
            damaged.append(part["name"])
    if missing or damaged:
        what = "; ".join(s for s in (f"missing {', '.join(missing)}" if missing else "",
                                     f"damaged {', '.join(damaged)}" if damaged else "") if s)
        raise GTVError(f"pack {folder} is incomplete ({what}); every part of it must travel")
    return manifest


def read_pack(folder: str | Path, spec: PreprocessSpec | None = None) -> SliceTable:
    """The table of a pack, after checking its parts (and, given ``spec``, that it was made with it)."""
    folder = Path(folder)
    manifest = check_pack(folder)
    if spec is not None and PreprocessSpec.from_dict(manifest["preprocess"]) != spec:
        raise GTVError(f"pack {folder} was prepared with {manifest['preprocess']}, but this run's preprocessing is "
                       f"{spec.to_dict()}; build a pack with the run's settings")
    specs = manifest["arrays"]
    sizes = [int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize for a in specs]
    buf = np.empty(sum(sizes), np.uint8)
    filled, decomp = 0, lzma.LZMADecompressor()
    try:
        for part in manifest["parts"]:
            with open(folder / part["name"], "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    out = decomp.decompress(block)
                    if filled + len(out) > buf.size:
                        raise GTVError(f"pack {folder} holds more data than its manifest says")
                    buf[filled:filled + len(out)] = np.frombuffer(out, np.uint8)
                    filled += len(out)
    except lzma.LZMAError as exc:
        raise GTVError(f"pack {folder} does not decompress: {exc}") from exc
    if filled != buf.size or not decomp.eof:
        raise GTVError(f"pack {folder} holds {filled} bytes, its manifest says {buf.size}")
    arrays, offset = {}, 0
    for a, size in zip(specs, sizes):
        arrays[a["name"]] = buf[offset:offset + size].view(np.dtype(a["dtype"])).reshape(a["shape"])
        offset += size
    return SliceTable(arrays["images"], arrays["masks"], arrays["patient"], arrays["slice_index"],
                      arrays["tumour"], list(manifest["patients"]), [tuple(s) for s in manifest["spacing"]])


def read_tables(folder: str | Path, spec: PreprocessSpec) -> tuple[SliceTable, SliceTable]:
    """``(train, val)`` tables of a pack folder made by ``build``."""
    folder = Path(folder)
    return read_pack(folder / "train", spec), read_pack(folder / "val", spec)
