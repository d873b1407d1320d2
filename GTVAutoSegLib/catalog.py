"""The models as listed in ``Resources/Models.json``, readable without torch.

The Slicer widget fills its model selector before torch may be installed, and the bundle loader
enforces each entry's SHA-256; both read the list through this module. An entry's file either lies
beside Models.json (kept in the repository) or, when the entry has a ``url``, is downloaded on
first use into the user's cache (``download.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import GTVError

RESOURCES = Path(__file__).resolve().parent.parent / "Resources"
MODELS_JSON = RESOURCES / "Models.json"


@dataclass
class ModelEntry:
    """One row of ``Resources/Models.json``.

    Args:
        name / version: how ``--model`` names it (``name`` or ``name@version``).
        file: the bundle file, relative to the folder of Models.json.
        sha256: the bundle's hash; a file that does not match is refused.
        title: a human-readable name for selectors.
        card: a model card file (``.md``/``.txt`` beside Models.json) or the card text itself.
        default: the model used when none is named.
        url: where to download ``file`` from when it is not beside Models.json (optional).
    """

    name: str
    version: str
    file: str
    sha256: str
    title: str = ""
    card: str = ""
    default: bool = False
    url: str = ""

    def path(self, resources: Path) -> Path:
        return resources / self.file

    def local_path(self, resources: Path) -> Path:
        """Where the file is used from: beside Models.json if it is there, else the download cache."""
        shipped = self.path(resources)
        if shipped.is_file() or not self.url:
            return shipped
        from .download import cache_folder

        return cache_folder() / self.file

    def fetch(self, resources: Path, progress=None) -> Path:
        """The file to load: the shipped one, or the cached download (downloaded and verified now
        if it is not there yet). ``progress(stage, fraction)`` follows the download."""
        path = self.local_path(resources)
        if path == self.path(resources):
            return path
        from .download import fetch

        return fetch(self.url, self.sha256, path, f"{self.name}@{self.version}", progress)

    @property
    def key(self) -> str:
        """``name@version``: names one entry even when several versions of a model are listed."""
        return f"{self.name}@{self.version}"

    def display_name(self) -> str:
        suffix = "" if not self.url else ", downloaded on first use"
        return f"{self.title or self.name} ({self.version}{suffix})"

    def card_text(self, resources: Path) -> str:
        """The model card's text: the file ``card`` names when there is one, else ``card`` itself."""
        candidate = resources / self.card if self.card and len(self.card) < 256 else None
        if candidate is not None and candidate.suffix.lower() in (".md", ".txt") and candidate.is_file():
            return candidate.read_text(encoding="utf-8")
        return self.card


def list_models(models_json: str | Path = MODELS_JSON) -> list[ModelEntry]:
    """The listed models; an empty list when the file does not exist."""
    models_json = Path(models_json)
    if not models_json.is_file():
        return []
    try:
        rows = json.loads(models_json.read_text(encoding="utf-8"))["models"]
        return [ModelEntry(**row) for row in rows]
    except (KeyError, TypeError, ValueError) as exc:
        raise GTVError(f"{models_json} is malformed: {exc}") from None


def prefetch(name_or_path: str | None, models_json: str | Path = MODELS_JSON, progress=None) -> None:
    """Download a listed model that is not here yet, reporting ``progress("download", fraction)``
    (the CLI shows it as a bar or as progress lines); anything else is left to the bundle loader."""
    entries = list_models(models_json)
    if name_or_path is None:
        entries = [e for e in entries if e.default] or entries[:1]
    else:
        entries = [e for e in entries if name_or_path in (e.name, f"{e.name}@{e.version}")]
    if entries:
        entries[0].fetch(Path(models_json).parent, progress)


def newest(entries: list[ModelEntry]) -> ModelEntry:
    """The entry a bare model name means among its versions: the default one, else the newest."""
    def version(e: ModelEntry) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in str(e.version).split("."))

    return max(entries, key=lambda e: (e.default, version(e)))
