"""The model selector: the models of Models.json, bundle files the user picked, and "Model bundle file...".

It drives any object with a ``QComboBox``'s Python interface (``blockSignals``, ``clear``,
``addItem``, ``itemData``, ``findData``, the ``count`` / ``currentIndex`` / ``currentData``
properties), so the rule "one file dialog per pick, and the combo always shows the model in use"
is tested without Qt. Every change it makes to the combo happens with its signals blocked: a
``QComboBox`` announces a shifted current index when an item is inserted before it, which would
re-enter the selection handler and open the dialog a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

BROWSE = "__browse__"
NONE_LABEL = "No model installed"
BROWSE_LABEL = "Model bundle file..."


class ModelChoice:
    """Args:
        combo: the model combo box.
        askForBundle: opens the file dialog; returns the chosen path, or "" / None on Cancel.
    """

    def __init__(self, combo, askForBundle: Callable[[], str | None]):
        self.combo = combo
        self.askForBundle = askForBundle
        self.models: list = []
        self.files: list[str] = []  # bundle files picked in this session, listed after the models
        self.current = ""  # "" = the default model

    def setModels(self, models: Sequence) -> None:
        """The Models.json entries (``catalog.ModelEntry``), the default one first."""
        self.models = sorted(models, key=lambda m: not m.default)
        self._rebuild()

    def show(self, model: str) -> None:
        """Make the combo show ``model`` (a listed ``name@version`` or bare name, a bundle path, or
        "" for the default)."""
        named = [m for m in self.models if m.name == model]
        if named:  # a bare name (a scene saved when one version was listed): its default or newest
            from GTVAutoSegLib.catalog import newest

            model = newest(named).key
        if model and model not in self.files and model not in {m.key for m in self.models}:
            self.files.append(model)
        self.current = model or ""
        self._rebuild()

    def choose(self, index: int) -> str:
        """The user picked entry ``index``; returns the model now in use (Cancel keeps the old one)."""
        data = self.combo.itemData(index)
        if data == BROWSE:
            path = self.askForBundle()
            if path:
                self.show(str(path))
            else:
                self._rebuild()  # back to the entry of the model still in use
            return self.current
        self.current = data or ""
        return self.current

    def _entries(self) -> list[tuple[str, str]]:
        entries = [(m.display_name(), m.key) for m in self.models]
        if not entries:
            entries.append((NONE_LABEL, ""))
        entries += [(Path(f).name, f) for f in self.files]
        entries.append((BROWSE_LABEL, BROWSE))
        return entries

    def _rebuild(self) -> None:
        combo = self.combo
        wasBlocked = combo.blockSignals(True)
        try:
            combo.clear()
            for label, data in self._entries():
                combo.addItem(label, data)
            index = combo.findData(self.current) if self.current else 0
            combo.currentIndex = max(index, 0)
        finally:
            combo.blockSignals(wasBlocked)
