"""Writing outputs so that a failure, a full disk or a signal never leaves a partial or wrong file.

- :func:`atomic_output`: one file under a temporary name beside the target, renamed onto it only
  when the writer succeeded; the temporary name fits the file system's name limit.
- :func:`atomic_outputs`: the files of one case written under temporary names, then renamed together
  with SIGINT and SIGTERM held back, so they appear all or none.
- :func:`terminate_as_interrupt`: SIGTERM ends the program through the same clean-up as Ctrl+C.
- :func:`check_case_name`, :func:`prepare_output_dir`, :func:`refuse_overwriting_inputs`: the
  checks that keep outputs inside the output folder and off the inputs.
- :data:`OUTPUT_FORMATS`: what a case can be written as, and under which file name.

Every problem is a one-line :class:`GTVError` (OSError and the writers' RuntimeError included).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import threading
from glob import escape as glob_escape
from pathlib import Path
from typing import Iterable, Iterator

from .errors import GTVError

# Compound suffixes kept whole in temporary names, so writers still pick the format by the name.
_COMPOUND_SUFFIXES = (".seg.nrrd", ".nii.gz")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What one case can be written as: format name -> file name after the case name. The CLI, the batch
# script and the Slicer module take their choices and file names from here.
OUTPUT_FORMATS = {
    "nrrd": ".seg.nrrd",         # 3D Slicer segmentation
    "nifti": "_label.nii.gz",    # label map
    "seg": "_seg.dcm",           # DICOM SEG
    "rtstruct": "_rtstruct.dcm",  # DICOM RT Structure Set
}
DEFAULT_FORMATS = ("nrrd", "nifti")
DICOM_FORMATS = ("seg", "rtstruct")


def parse_formats(text: str) -> tuple[str, ...]:
    """``"nrrd,seg"`` -> ``("nrrd", "seg")``, in :data:`OUTPUT_FORMATS` order; GTVError naming an unknown one."""
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    unknown = [n for n in names if n not in OUTPUT_FORMATS]
    if unknown or not names:
        raise GTVError(f"unknown output format {', '.join(unknown) or repr(text)}; choose from "
                       f"{', '.join(OUTPUT_FORMATS)} (comma-separated)")
    return tuple(f for f in OUTPUT_FORMATS if f in names)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so ``finally`` blocks and temporary files are cleaned
    up exactly as for Ctrl+C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def name_max(folder: Path) -> int:
    """Longest file name (bytes) the folder's file system takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def split_suffix(name: str) -> tuple[str, str]:
    """``case.seg.nrrd`` -> ``("case", ".seg.nrrd")``; ``a.b.png`` -> ``("a.b", ".png")``."""
    lower = name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def _temporary_parts(path: Path) -> tuple[str, str]:
    """Temporary names are ``.{short}.tmp-{8 hex}{suffix}``: ``(short, suffix)`` for ``path``."""
    stem, suffix = split_suffix(path.name)
    room = name_max(path.parent) - len(f"..tmp-12345678{suffix}".encode())
    return stem.encode()[: max(room, 1)].decode("utf-8", "ignore") or "o", suffix


def _temporary_path(path: Path) -> Path:
    short, suffix = _temporary_parts(path)
    while True:
        tmp = path.parent / f".{short}.tmp-{secrets.token_hex(4)}{suffix}"
        if not tmp.exists():
            return tmp


def remove_temporaries(path: str | Path) -> int:
    """Remove the temporary files that :func:`atomic_output` left beside ``path`` when its process
    was killed (``finally`` never ran); returns how many. Only for a writer that knows no other
    process is writing ``path`` now (a batch retrying a case whose worker died)."""
    path = Path(path)
    short, suffix = _temporary_parts(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob_escape(short)}.tmp-????????{glob_escape(suffix)}"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed += 1
    return removed


def _write_error(path: Path, exc: BaseException) -> GTVError:
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            reason += " (the disk or quota is full)"
    else:
        text = str(exc).strip()
        reason = text.splitlines()[-1].strip() if text else type(exc).__name__
    return GTVError(f"cannot write {path}: {reason[:200]}")


def _check_target(path: Path) -> None:
    if not path.parent.is_dir():
        raise GTVError(f"output folder does not exist: {path.parent}")
    if len(path.name.encode()) > name_max(path.parent):
        raise GTVError(f"cannot write {path.name[:40]}...: the name is longer than the file system's "
                       f"{name_max(path.parent)} bytes")
    if path.is_dir():
        raise GTVError(f"cannot write {path}: it is a folder")


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix (``.case.tmp-1a2b3c4d.seg.nrrd``) so writers choose the format
    by it. On any exception the temporary file is removed and ``path`` is left as it was.

    Raises:
        GTVError: the output folder does not exist, ``path`` is a folder or too long a name, or the
            write failed (no space, no permission, the writer's own error).
    """
    with atomic_outputs([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(paths: Iterable[str | Path]) -> Iterator[tuple[Path, ...]]:
    """Temporary paths for several files that must appear together (the outputs of one case).

    The block writes every temporary file; then all are renamed onto their targets with SIGINT and
    SIGTERM held back, so a signal arrives after the last rename, never between two. If the block
    or a rename fails, every temporary file is removed and targets not yet renamed keep their
    previous content.
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        _check_target(target)
    temporaries: list[Path] = []
    try:
        for target in targets:
            temporaries.append(_temporary_path(target))
        try:
            yield tuple(temporaries)
        except (OSError, RuntimeError) as exc:
            culprit = next((t for t, tmp in zip(targets, temporaries) if tmp.exists()), targets[0])
            raise _write_error(culprit, exc) from None
        for target, tmp in zip(targets, temporaries):
            if not tmp.is_file():
                raise GTVError(f"cannot write {target}: the writer produced no file")
        with _signals_held():
            for target, tmp in zip(targets, temporaries):
                try:
                    tmp.replace(target)
                except OSError as exc:
                    raise _write_error(target, exc) from None
    finally:
        for tmp in temporaries:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block and deliver them after it.

    Done with Python-level handlers, not the thread's signal mask: torch's worker threads would
    still take a process-directed signal, and Python runs every handler in the main thread anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)  # now handled as it would have been (Terminated, Ctrl+C...)


def check_case_name(name: str) -> str:
    """A case name is a plain file name: no folder part, not hidden, not ``.``/``..``, printable."""
    if not name or name in (".", "..") or name.startswith("."):
        raise GTVError(f"case name {name!r} must be a plain file name (not empty, not starting with '.')")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise GTVError(f"case name {name!r} must not contain a folder part; outputs stay inside the output folder")
    if not name.isprintable():
        raise GTVError(f"case name {name!r} must be printable (no control characters)")
    return name


def prepare_output_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove it can take files; GTVError in one line otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GTVError(f"output {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GTVError(f"cannot create output folder {folder}: a part of that path is a file") from None
    except OSError as exc:
        raise GTVError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    probe = folder / f".gtvautoseg-probe-{secrets.token_hex(4)}"
    try:
        probe.touch(exist_ok=False)
    except OSError as exc:
        raise GTVError(f"cannot write into output folder {folder}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def refuse_overwriting_inputs(outputs: Iterable[Path], inputs: Iterable[str | Path | None]) -> None:
    """GTVError when any output would replace one of the inputs (same file, by any path or link)."""
    guarded = []
    for p in inputs:
        if p is None:
            continue
        p = Path(p)
        if p.is_file():
            guarded.append(p)
        elif p.is_dir():
            guarded += [f for f in p.iterdir() if f.is_file()]
    resolved = {g.resolve(): g for g in guarded}
    for out in outputs:
        out = Path(out)
        hit = resolved.get(out.resolve())
        if hit is None and out.exists():
            hit = next((g for g in guarded if _same_file(out, g)), None)
        if hit is not None:
            raise GTVError(f"output {out} would overwrite the input {hit}; choose another output folder or name")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
