"""Datasets on disk -> one in-memory table of model-space slices, and patient-level splits.

Three layouts are read (the ``layout`` of :class:`DataConfig`):

- ``openkbp``: ``<root>/<split>/pt_N/ct.nii.gz`` + ``rois/<ROI>.nii.gz``; ``<root>/cases.json``
  lists every patient, its split and the ROIs it has.
- ``structseg``: ``<root>/<case>/data.nii.gz`` + ``<root>/<case>/label.nii.gz`` (a label map; one
  value is the target).
- ``nnunet``: ``<root>/imagesTr/<case>_0000.nii.gz`` + ``<root>/labelsTr/<case>.nii.gz``.

Every case goes once through the library's ``prepare`` + ``to_model_space`` (the very code inference
runs), and the slices land in a :class:`SliceTable`. Prepared cases are cached as ``.npz`` files
keyed by the file contents' identity and the preprocessing spec, so a second run starts in seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from GTVAutoSegLib.errors import GTVError
from GTVAutoSegLib.filetypes import ONE_FILE_SUFFIXES
from GTVAutoSegLib.image import Image
from GTVAutoSegLib.io import read_ct, read_mask
from GTVAutoSegLib.outputs import atomic_output
from GTVAutoSegLib.preprocessing import PreprocessSpec, prepare, to_model_space

from .tablestore import SliceTable, read_tables

logger = logging.getLogger(__name__)

LAYOUTS = ("openkbp", "structseg", "nnunet")
CACHE_VERSION = 2  # bump when what a cache file holds changes


@dataclass(frozen=True)
class CaseRef:
    """One patient on disk.

    Args:
        patient: unique id within the dataset (e.g. ``pt_12``).
        image: CT file.
        label: mask or label-map file on (or resampleable onto) the CT's grid.
        label_value: the target's value in a label map; None takes every non-zero voxel.
        others: masks of other structures that become classes 2, 3, ... (in this order) where the
            target is not, e.g. OpenKBP's lower-dose PTV63 and PTV56 around a PTV70 target.
    """

    patient: str
    image: Path
    label: Path
    label_value: int | None = None
    others: tuple[Path, ...] = ()


@dataclass
class DataConfig:
    """Where the data is and how it is split into training and validation patients.

    Args:
        layout: one of ``LAYOUTS``.
        root: dataset folder; relative paths are taken from the project root.
        target: OpenKBP ROI name (PTV70 by default); ignored by the other layouts.
        other_targets: OpenKBP ROI names that become extra classes (label 2 = any of them outside the
            target), so a network learns what the target is not: ``["PTV63", "PTV56"]``. A patient
            without them just has no class-2 voxels. Segmenters then need ``out_channels`` 3.
        label_value: target value in StructSeg / nnU-Net label maps.
        split: ``"fixed"`` (OpenKBP's own ``train_split`` / ``val_split``) or ``"kfold"``.
        train_split / val_split: OpenKBP split folders for ``"fixed"``; ``"kfold"`` pools
            ``train_split`` only.
        folds / fold: K and which fold is validation for ``"kfold"``.
        seed: split seed.
        max_train_patients / max_val_patients: keep only the first N (after the seeded shuffle) of
            each side, for quick runs; None keeps all.
        cache_dir: where prepared cases are cached (git-ignored); empty string disables the cache.
        pack: a folder made by ``python -m training.tablepack build``; when set, the tables come from
            it (no image file is read) and ``max_*_patients`` choose among its patients.
    """

    layout: str = "openkbp"
    root: str = "../shared/data/openkbp"
    target: str = "PTV70"
    other_targets: tuple[str, ...] = ()
    label_value: int = 1
    split: str = "fixed"
    train_split: str = "train"
    val_split: str = "validation"
    folds: Annotated[int, Field(ge=2)] = 5
    fold: Annotated[int, Field(ge=0)] = 0
    seed: int = 0
    max_train_patients: Annotated[int, Field(ge=1)] | None = None
    max_val_patients: Annotated[int, Field(ge=1)] | None = None
    cache_dir: str = "training/cache"
    pack: str = ""


# ------------------------------------------------------------------------------------ readers


def _find_image(stem: Path) -> Path | None:
    for ending in ONE_FILE_SUFFIXES:
        path = stem.parent / (stem.name + ending)
        if path.exists():
            return path
    return None


def openkbp_cases(root: str | Path, split: str = "train", roi: str = "PTV70",
                  others: tuple[str, ...] = ()) -> list[CaseRef]:
    """Patients of one OpenKBP split that have a CT and ``roi``, in ``cases.json`` order.

    Patients without the ROI or whose CT is missing are skipped (and counted in the log): OpenKBP's
    ROIs vary by patient, and a patient without the target would teach "no tumour" on a real one.
    ``others``: ROIs attached as extra classes where a patient has them.
    """
    root = Path(root)
    listing = root / "cases.json"
    if not listing.is_file():
        raise GTVError(f"{listing} not found: is {root} an OpenKBP folder?")
    cases, skipped = [], 0
    for row in json.loads(listing.read_text()):
        if row.get("split") != split:
            continue
        folder = root / split / row["patient"]
        image, label = folder / "ct.nii.gz", folder / "rois" / f"{roi}.nii.gz"
        if row.get("status") != "ok" or roi not in row.get("roi_voxels", {}) or not (image.exists() and label.exists()):
            skipped += 1
            continue
        extra = tuple(p for p in (folder / "rois" / f"{o}.nii.gz" for o in others) if p.exists())
        cases.append(CaseRef(row["patient"], image, label, others=extra))
    if not cases:
        raise GTVError(f"no OpenKBP patient in {root}/{split} has a CT and ROI {roi!r}")
    if skipped:
        logger.info("openkbp %s: %d patients with %s, %d skipped (no CT or no %s)", split, len(cases), roi, skipped, roi)
    return cases


def structseg_cases(root: str | Path, label_value: int = 1) -> list[CaseRef]:
    """StructSeg2019: every ``<case>/data.*`` with a ``<case>/label.*`` beside it, sorted by case."""
    root = Path(root)
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        image, label = _find_image(folder / "data"), _find_image(folder / "label")
        if image is not None and label is not None:
            cases.append(CaseRef(folder.name, image, label, label_value))
    if not cases:
        raise GTVError(f"no StructSeg case (<case>/data.nii.gz + <case>/label.nii.gz) under {root}")
    return cases


def nnunet_cases(root: str | Path, label_value: int = 1) -> list[CaseRef]:
    """nnU-Net raw: ``imagesTr/<case>_0000.*`` paired with ``labelsTr/<case>.*``, sorted by case."""
    root = Path(root)
    images, labels = root / "imagesTr", root / "labelsTr"
    cases = []
    for path in sorted(images.glob("*_0000.*")) if images.is_dir() else []:
        ending = next((e for e in ONE_FILE_SUFFIXES if path.name.endswith(e)), None)
        if ending is None:
            continue
        case = path.name[: -len("_0000" + ending)]
        label = _find_image(labels / case)
        if label is not None:
            cases.append(CaseRef(case, path, label, label_value))
    if not cases:
        raise GTVError(f"no nnU-Net case (imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz) under {root}")
    return cases


def load_case(case: CaseRef) -> tuple[Image, Image]:
    """CT in HU and the target on the CT's grid: a binary mask, or with ``case.others`` a label map
    (1 target, 2 any other structure outside it)."""
    ct = read_ct(case.image)
    mask = read_mask(case.label, like=ct, label=case.label_value)
    if not case.others:
        return ct, mask
    target = np.asarray(mask.array) != 0
    other = np.zeros_like(target)
    for path in case.others:
        other |= np.asarray(read_mask(path, like=ct).array) != 0
    return ct, mask.with_array(np.where(target, 1, np.where(other, 2, 0)).astype(np.uint8))


def prepare_case(ct: Image, mask: Image, spec: PreprocessSpec, n_classes: int = 2):
    """One case into model space; ``mask`` a binary mask, or a label map of ``n_classes`` (1 = target).

    Returns:
        ``(slices (Z, H, W) float16, labels (Z, H, W) uint8, model-space spacing, flags (Z,) bool)``;
        ``flags`` says which model slices hold target on the original grid.
    """
    slices, state = prepare(ct, spec)
    target = np.asarray(mask.array) != 0 if n_classes <= 2 else np.asarray(mask.array) == 1
    per_slice = np.moveaxis(target, state.slice_axis, 0)
    flags = per_slice.reshape(per_slice.shape[0], -1).any(1)[state.original_slice_index]
    labels = to_model_space(mask.array, state, n_classes)
    return slices.astype(np.float16), labels, tuple(state.model_spacing), flags


def _cache_key(case: CaseRef, spec: PreprocessSpec) -> str:
    ident = {"v": CACHE_VERSION, "spec": spec.to_dict(), "label_value": case.label_value}
    for name, path in (("image", case.image), ("label", case.label), *((f"other{i}", p) for i, p in enumerate(case.others))):
        st = Path(path).stat()
        ident[name] = [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _load_or_prepare(case: CaseRef, spec: PreprocessSpec, cache: Path | None):
    path = cache / f"{case.patient}-{_cache_key(case, spec)}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["images"], z["masks"], tuple(float(v) for v in z["spacing"]), z["flags"]
    images, masks, spacing, flags = prepare_case(*load_case(case), spec, n_classes=2 + bool(case.others))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a unique temporary name, renamed when complete: a killed run never leaves half a cache
        # file, and two runs preparing the same case at once do not trip over each other
        with atomic_output(path) as tmp:
            np.savez(tmp, images=images, masks=masks, spacing=np.asarray(spacing), flags=flags)
    return images, masks, spacing, flags


def build_slice_table(cases: list[CaseRef], spec: PreprocessSpec, cache_dir: str | Path | None = None,
                      progress: bool = False) -> SliceTable:
    """Every case through preprocessing once (or from the cache) into one table.

    Args:
        cases: the patients, in the order the table keeps them.
        spec: the preprocessing the model will be trained (and later run) with.
        cache_dir: folder for per-case ``.npz`` caches; None disables caching.
        progress: show a tqdm bar.
    """
    spec.validate()
    ids = [c.patient for c in cases]
    if len(set(ids)) != len(ids):
        raise GTVError("patient ids are not unique; a patient would end up on both sides of a split")
    cache = Path(cache_dir) if cache_dir else None
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="prepare", unit="case", dynamic_ncols=True)
    parts = [(c.patient, *_load_or_prepare(c, spec, cache)) for c in iterator]
    return SliceTable.concatenate(parts)


# ------------------------------------------------------------------------------------ splits


def kfold_patients(patients: list[str], folds: int, fold: int, seed: int) -> tuple[list[str], list[str]]:
    """``(train, validation)`` patient ids of one fold of a seeded patient-level K-fold split.

    The patients are shuffled once with ``seed`` and cut into ``folds`` near-equal parts; fold
    ``fold`` is validation. Every patient is in exactly one validation fold, and never on both sides.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise GTVError(f"need folds >= 2 and 0 <= fold < folds, got folds={folds} fold={fold}")
    unique = sorted(set(patients))
    if len(unique) < folds:
        raise GTVError(f"{len(unique)} patients cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(unique))
    parts = np.array_split(order, folds)
    val = sorted(unique[i] for i in parts[fold])
    train = sorted(set(unique) - set(val))
    return train, val


def _seeded_subset(ids: list[str], n: int | None, seed: int) -> list[str]:
    """``n`` of ``ids`` drawn at random with ``seed`` (kept in their order); all of them when ``n`` is None."""
    if n is None or n >= len(ids):
        return ids
    keep = np.sort(np.random.default_rng(seed).permutation(len(ids))[:n])
    return [ids[i] for i in keep]


def split_cases(cfg: DataConfig, project_root: Path) -> tuple[list[CaseRef], list[CaseRef]]:
    """Training and validation cases as ``cfg`` says."""
    if cfg.layout not in LAYOUTS:
        raise GTVError(f"unknown data layout {cfg.layout!r}; known: {', '.join(LAYOUTS)}")
    root = Path(cfg.root)
    root = root if root.is_absolute() else (project_root / root)
    if not root.exists():
        raise GTVError(f"data folder {root} not found (the real data lives in ../shared/data)")

    if cfg.layout == "openkbp" and cfg.split == "fixed":
        train = openkbp_cases(root, cfg.train_split, cfg.target, tuple(cfg.other_targets))
        val = openkbp_cases(root, cfg.val_split, cfg.target, tuple(cfg.other_targets))
    elif cfg.split == "kfold":
        if cfg.layout == "openkbp":
            pool = openkbp_cases(root, cfg.train_split, cfg.target, tuple(cfg.other_targets))
        elif cfg.layout == "structseg":
            pool = structseg_cases(root, cfg.label_value)
        else:
            pool = nnunet_cases(root, cfg.label_value)
        by_id = {c.patient: c for c in pool}
        train_ids, val_ids = kfold_patients(list(by_id), cfg.folds, cfg.fold, cfg.seed)
        train, val = [by_id[p] for p in train_ids], [by_id[p] for p in val_ids]
    else:
        raise GTVError(f"split {cfg.split!r} is not available for layout {cfg.layout!r} (use 'kfold')")

    overlap = {c.patient for c in train} & {c.patient for c in val}
    if overlap:
        raise GTVError(f"patients on both sides of the split: {', '.join(sorted(overlap)[:5])}")
    keep_t = set(_seeded_subset([c.patient for c in train], cfg.max_train_patients, cfg.seed))
    keep_v = set(_seeded_subset([c.patient for c in val], cfg.max_val_patients, cfg.seed + 1))
    return [c for c in train if c.patient in keep_t], [c for c in val if c.patient in keep_v]


def packed_tables(cfg: DataConfig, spec: PreprocessSpec, project_root: Path) -> tuple[SliceTable, SliceTable]:
    """``(train, val)`` from ``cfg.pack``, cut to ``max_*_patients`` as :func:`split_cases` would.

    A pack made with other target volumes as class 2 serves a run without them too: it sees the
    target alone (so one pack carries the data of a locator with PTV classes and of a binary 2D net).
    """
    path = Path(cfg.pack)
    train, val = read_tables(path if path.is_absolute() else project_root / path, spec)
    tables = (train.subset(_seeded_subset(train.patients, cfg.max_train_patients, cfg.seed)),
              val.subset(_seeded_subset(val.patients, cfg.max_val_patients, cfg.seed + 1)))
    if not cfg.other_targets:
        for t in tables:
            t.masks = (t.masks == 1).astype(np.uint8)
    return tables


def resolve_cache(cfg: DataConfig, project_root: Path) -> Path | None:
    if not cfg.cache_dir:
        return None
    path = Path(cfg.cache_dir)
    return path if path.is_absolute() else project_root / path
