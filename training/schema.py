"""Training configs validated by pydantic against the dataclasses themselves.

The dataclasses in ``config.py``, ``augment.py``, ``data.py``, ``GTVAutoSegLib.losses``,
``GTVAutoSegLib.models``, ``GTVAutoSegLib.preprocessing`` and ``GTVAutoSegLib.coarse`` stay the one definition of a config
(``config.py`` passes them in, so this module imports nothing of ``training/``);
pydantic reads their type hints (and the ``Annotated`` bounds on some fields) and checks a JSON
config against them: ``batch_size=abc``, ``augment.p_rotate=x`` or ``max_train_patients=1.5`` are
refused in one line instead of reaching the trainer. The library does not depend on pydantic: its
per-class settings are attached here, where training needs them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from GTVAutoSegLib.errors import GTVError

# Unknown keys are errors (a typo would otherwise be ignored); a number given for a text field
# (``--set out_dir=2024``) is taken as text.
_CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True)
_ADAPTERS: dict[type, TypeAdapter] = {}


def validate_config(data: dict[str, Any], root: type, sections: tuple[type, ...]) -> Any:
    """A ``root`` dataclass (its nested ``sections`` dataclasses checked too) from JSON-like data, or
    a one-line GTVError naming the first bad field."""
    if root not in _ADAPTERS:
        for cls in (root, *sections):
            cls.__pydantic_config__ = _CONFIG
        _ADAPTERS[root] = TypeAdapter(root)
    try:
        text = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GTVError(f"config is not JSON data: {exc}") from None
    try:
        return _ADAPTERS[root].validate_json(text)
    except ValidationError as exc:
        raise GTVError(_describe(exc, root, sections)) from None


def _describe(exc: ValidationError, root: type, sections: tuple[type, ...]) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "root"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    if first["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        section, _, key = where.rpartition(".")
        known = _known_keys(section, root, sections)
        return f"unknown config key(s) in {section or 'root'}: {key}; known: {', '.join(known)}{more}"
    given = first.get("input")
    shown = repr(given) if not isinstance(given, dict) else "a mapping"
    return f"config {where}: {first['msg']} (got {shown}){more}"


def _known_keys(section: str, root: type, sections: tuple[type, ...]) -> list[str]:
    cls: Any = root
    for part in [p for p in section.split(".") if p]:
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        nested = [c for c in sections if c.__name__ in str(hints.get(part, ""))]
        if not nested:
            return []
        cls = nested[0]
    return sorted(f.name for f in dataclasses.fields(cls))
