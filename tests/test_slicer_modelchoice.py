"""The model selector, on a stand-in combo box that announces index changes the way QComboBox does
(so the double file dialog of issue 14 would show up here)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))

from GTVAutoSegLib.catalog import ModelEntry  # noqa: E402
from GTVAutoSegSlicerLib.modelchoice import BROWSE, ModelChoice  # noqa: E402


class QtLikeComboBox:
    """QComboBox's behaviour that matters here: changing the current index (directly, by inserting
    an item before it, or by clearing) emits currentIndexChanged unless signals are blocked."""

    def __init__(self):
        self.items: list[tuple[str, str]] = []
        self._index = -1
        self._blocked = False
        self.slots = []

    def blockSignals(self, block: bool) -> bool:
        was, self._blocked = self._blocked, block
        return was

    def _set(self, index: int) -> None:
        if index != self._index:
            self._index = index
            if not self._blocked:
                for slot in self.slots:
                    slot(index)

    def clear(self):
        self.items = []
        self._set(-1)

    def addItem(self, text, data):
        self.items.append((text, data))
        if self._index < 0:
            self._set(0)

    def insertItem(self, index, text, data):
        self.items.insert(index, (text, data))
        self._set(self._index + 1 if index <= self._index else max(self._index, 0))

    def itemData(self, index):
        return self.items[index][1]

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    @property
    def count(self):
        return len(self.items)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self._set(index)

    @property
    def currentData(self):
        return self.items[self._index][1] if self._index >= 0 else None

    def userPicks(self, index):
        self._set(index)


def _selector(dialogAnswers):
    combo = QtLikeComboBox()
    asked = []

    def askForBundle():
        asked.append(True)
        return dialogAnswers.pop(0)

    choice = ModelChoice(combo, askForBundle)
    stored = {"model": ""}

    def onModelSelected(index):  # what the widget's slot does
        stored["model"] = choice.choose(index)
        choice.show(stored["model"])  # the parameter node's update reaches the combo again

    combo.slots.append(onModelSelected)
    choice.setModels([ModelEntry("hn", "1.0", "hn.pt", "0" * 64, title="Head and neck", default=True),
                      ModelEntry("lung", "0.2", "lung.pt", "1" * 64, title="Lung")])
    return combo, choice, stored, asked


def test_picking_a_bundle_file_opens_one_dialog_and_shows_the_file():
    combo, choice, stored, asked = _selector(["/models/mine.pt"])
    assert [d for _, d in combo.items] == ["hn@1.0", "lung@0.2", BROWSE] and combo.currentData == "hn@1.0"

    combo.userPicks(combo.findData(BROWSE))

    assert len(asked) == 1
    assert stored["model"] == "/models/mine.pt" and combo.currentData == "/models/mine.pt"
    assert combo.items[combo.currentIndex][0] == "mine.pt"
    assert [d for _, d in combo.items][-1] == BROWSE


def test_cancel_keeps_the_model_in_use_on_show():
    combo, choice, stored, asked = _selector(["/models/mine.pt", ""])
    combo.userPicks(combo.findData(BROWSE))
    combo.userPicks(combo.findData(BROWSE))  # and Cancel

    assert len(asked) == 2  # one dialog per pick, never two
    assert stored["model"] == "/models/mine.pt" and combo.currentData == "/models/mine.pt"
    combo.userPicks(combo.findData("lung@0.2"))
    assert stored["model"] == "lung@0.2" and combo.currentData == "lung@0.2" and len(asked) == 2
    choice.show("lung")  # a scene saved with the bare name shows that model, not a file entry
    assert combo.currentData == "lung@0.2" and "lung" not in [d for _, d in combo.items]


def test_a_model_from_a_saved_scene_is_shown_and_no_models_is_said():
    combo, choice, stored, asked = _selector([])
    choice.show("/elsewhere/old.pt")
    assert combo.currentData == "/elsewhere/old.pt" and not asked
    choice.setModels([])
    choice.show("")
    assert combo.items[0] == ("No model installed", "") and combo.currentIndex == 0
