"""The reviewer's correction of the classifier's slice decision.

The cascade segments a slice only when the classifier passes it. A reviewer who sees a missed
tumour slice, or a normal slice the classifier kept, corrects the decision instead of painting the
pixels: ``include`` slices are segmented whatever the classifier says, ``exclude`` slices stay
empty, and ``only`` segments exactly the given slices without running the classifier at all (what
the Slicer module's "Re-segment selected slices" runs).

Slice indices are the input image's own: ``image.array[k]``, the K index of the volume in 3D
Slicer, counted from 0. Written on the command line as ``"3,7,10-12"``; in a file as JSON::

    {"include": [12, 13], "exclude": [40]}        or        {"only": [12, 13]}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GTVError

FILE_KEYS = ("include", "exclude", "only")


def parse_slice_list(text: str) -> frozenset[int]:
    """``"3,7,10-12"`` -> ``{3, 7, 10, 11, 12}``; raises ``GTVError`` on anything else."""
    out: set[int] = set()
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise GTVError(f"'{part}' is not a slice index or range (write slices as 3,7,10-12)") from None
        if first < 0 or last < first:
            raise GTVError(f"'{part}' is not a slice index or range (indices count from 0, ranges go up)")
        out.update(range(first, last + 1))
    return frozenset(out)


def _index_set(values, what: str) -> frozenset[int]:
    if isinstance(values, str):
        return parse_slice_list(values)
    try:
        items = list(values)
    except TypeError:
        raise GTVError(f"'{what}' must be a list of slice indices") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise GTVError(f"'{what}' must hold slice indices (whole numbers from 0)")
    return frozenset(items)


@dataclass(frozen=True)
class SliceSelection:
    """Which slices the segmenter runs on, beyond (or instead of) the classifier's choice.

    Args:
        include: always segmented (the classifier missed them).
        exclude: always empty (the classifier wrongly kept them).
        only: when not None, exactly these slices are segmented and the classifier does not run.
    """

    include: frozenset[int] = frozenset()
    exclude: frozenset[int] = frozenset()
    only: frozenset[int] | None = None

    def __post_init__(self) -> None:
        both = sorted(self.include & self.exclude)
        if both:
            raise GTVError(f"slice(s) {_compact(both)} are both included and excluded")
        if self.only is not None and (self.include or self.exclude):
            raise GTVError("'only' slices cannot be combined with included or excluded slices")

    @classmethod
    def of(cls, include: Iterable[int] = (), exclude: Iterable[int] = (),
           only: Iterable[int] | None = None) -> "SliceSelection":
        return cls(frozenset(include), frozenset(exclude), None if only is None else frozenset(only))

    @classmethod
    def from_file(cls, path: str | Path) -> "SliceSelection":
        """Read the JSON override file (see the module docstring)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise GTVError(f"cannot read slice file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise GTVError(f"slice file {path.name} is not JSON ({exc})") from None
        if not isinstance(data, dict) or set(data) - set(FILE_KEYS):
            raise GTVError(f"slice file {path.name} must be a JSON object with keys from {', '.join(FILE_KEYS)}")
        only = data.get("only")
        return cls(_index_set(data.get("include", []), "include"), _index_set(data.get("exclude", []), "exclude"),
                   None if only is None else _index_set(only, "only"))

    def merged(self, other: "SliceSelection") -> "SliceSelection":
        """Both selections at once (command-line flags plus a file)."""
        only = None if self.only is None and other.only is None else (self.only or frozenset()) | (other.only or frozenset())
        return SliceSelection(self.include | other.include, self.exclude | other.exclude, only)

    @property
    def empty(self) -> bool:
        return not self.include and not self.exclude and self.only is None

    @property
    def runs_classifier(self) -> bool:
        return self.only is None

    def check(self, n_slices: int) -> None:
        """Raise ``GTVError`` when an index lies outside a CT of ``n_slices`` slices."""
        named = set(self.include | self.exclude | (self.only or frozenset()))
        outside = sorted(k for k in named if k >= n_slices)
        if outside:
            raise GTVError(f"slice(s) {_compact(outside)} do not exist: the CT has {n_slices} slices (0-{n_slices - 1})")

    def apply(self, selected: np.ndarray) -> np.ndarray:
        """The classifier's ``(Z,)`` bool selection, in the input's slice order, corrected."""
        out = np.zeros(selected.shape, bool) if self.only is not None else np.asarray(selected, bool).copy()
        for indices, value in ((self.only or (), True), (self.include, True), (self.exclude, False)):
            idx = np.fromiter(indices, int)
            out[idx] = value
        return out

    def to_dict(self) -> dict:
        """JSON-safe; what the report records and ``from_file`` reads."""
        d = {"include": sorted(self.include), "exclude": sorted(self.exclude)}
        if self.only is not None:
            d = {"only": sorted(self.only)}
        return d


def _compact(indices: list[int]) -> str:
    shown = ", ".join(str(k) for k in indices[:8])
    return shown + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")
