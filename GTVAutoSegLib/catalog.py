"""The shipped models as listed in ``Resources/Models.json``, readable without torch.

The Slicer widget fills its model selector before torch may be installed, and the bundle loader
enforces each entry's SHA-256; both read the list through this module.
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
    """

    name: str
    version: str
    file: str
    sha256: str
    title: str = ""
    card: str = ""
    default: bool = False

    def path(self, resources: Path) -> Path:
        return resources / self.file

    def display_name(self) -> str:
        return f"{self.title or self.name} ({self.version})"

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
