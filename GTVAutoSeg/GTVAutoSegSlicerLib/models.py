"""Where the library and its ``Resources/Models.json`` are, and the models listed there.

The widget fills its model selector before torch may even be installed, so the list is read
through ``GTVAutoSegLib.catalog``, which does not import torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import GTVAutoSegError


def libraryFolder() -> Path:
    """The ``GTVAutoSegLib`` package folder, found without importing it.

    An editable install can report the package through a path hook with no ``origin``; its search
    locations still name the folder.
    """
    spec = importlib.util.find_spec("GTVAutoSegLib")
    if spec is None:
        raise GTVAutoSegError("the GTVAutoSegLib package is not installed with this module")
    candidates = [Path(spec.origin).parent] if spec.origin else []
    candidates += [Path(p) for p in (spec.submodule_search_locations or [])]
    for folder in candidates:
        if (folder / "__init__.py").is_file():
            return folder.resolve()
    raise GTVAutoSegError("the GTVAutoSegLib package is not installed with this module")


def modelsJsonPath() -> Path:
    """``Resources/Models.json`` beside the ``GTVAutoSegLib`` package (where the bundle loader looks too)."""
    return libraryFolder().parent / "Resources" / "Models.json"


def listModels(path: Path | None = None) -> list:
    """The models listed in Models.json (``GTVAutoSegLib.catalog.ModelEntry``); empty when absent."""
    from GTVAutoSegLib.catalog import list_models
    from GTVAutoSegLib.errors import GTVError

    try:
        return list_models(path or modelsJsonPath())
    except GTVError as exc:
        raise GTVAutoSegError(str(exc)) from None
