"""Models listed with a ``url`` in Models.json, downloaded on first use into the user's cache.

A model file kept in the repository (beside Models.json) is used as it is. A listed model that is
not there but has a ``url`` is downloaded once, with progress, into the cache folder, checked
against the SHA-256 Models.json gives, and only then renamed into place: a truncated download,
a wrong file or a dead server leaves nothing in the cache and ends in one line. Torch-free.

Cache folder: ``$GTVAUTOSEG_CACHE`` if set, else the platform's user cache folder
(``~/.cache/gtvautoseg`` on Linux, ``~/Library/Caches/gtvautoseg`` on macOS,
``%LOCALAPPDATA%\\gtvautoseg\\Cache`` on Windows), models in its ``models/`` subfolder.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from pathlib import Path

from .errors import GTVError

CACHE_ENV = "GTVAUTOSEG_CACHE"
CHUNK = 1 << 20
TIMEOUT_S = 60.0
ProgressFn = Callable[[str, float], None]


def cache_folder() -> Path:
    """Where downloaded models are kept (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "models"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "gtvautoseg" / "Cache"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches" / "gtvautoseg"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gtvautoseg"
    return base / "models"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, sha256: str, target: Path, label: str, progress: ProgressFn | None = None) -> Path:
    """``target`` with the given SHA-256, downloading it from ``url`` when it is missing or wrong.

    Args:
        url: ``https://`` (or ``http://``) address of the file.
        sha256: the hash the file must have (Models.json).
        target: where the verified file is kept.
        label: the model's name, for messages.
        progress: called as ``progress("download", fraction)``.

    Raises:
        GTVError: the server cannot be reached or answers with an error, the download stops
            early, or the file does not match ``sha256``; nothing is left at ``target`` then.
    """
    if not url.lower().startswith(("https://", "http://")):
        raise GTVError(f"model {label}: only http(s) download addresses are supported, not {url!r}")
    if target.is_file():
        if sha256_of(target) == sha256.lower():
            return target
        target.unlink()  # a stale or damaged copy: fetch it again
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        _download(url, partial, label, progress)
        if sha256_of(partial) != sha256.lower():
            raise GTVError(f"downloaded model {label} does not match its SHA-256 in Models.json (wrong or damaged "
                           f"file at {url}); nothing was cached")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _download(url: str, partial: Path, label: str, progress: ProgressFn | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "gtvautoseg"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            if progress:
                progress("download", 0.0)
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
                if progress and total:
                    progress("download", min(1.0, received / total))
    except urllib.error.HTTPError as exc:
        raise GTVError(f"cannot download model {label}: the server answered {exc.code} {exc.reason} for {url}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        if received:
            raise GTVError(f"download of model {label} stopped after {received} bytes ({reason}); nothing was cached") from None
        raise GTVError(f"cannot download model {label} from {url}: {reason}") from None
    if total and received != total:
        raise GTVError(f"download of model {label} stopped after {received} of {total} bytes; nothing was cached")
