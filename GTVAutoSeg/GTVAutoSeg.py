"""GTVAutoSeg: gross tumour volume segmentation on CT for radiotherapy, as a 3D Slicer module.

A thin shell: this widget -> ``GTVAutoSegSlicerLib.logic`` (MRML, no Qt) -> the ``gtvautoseg`` CLI
in a separate process -> ``GTVAutoSegLib`` (no Slicer). Scripts call the logic directly::

    logic = slicer.util.getModuleLogic("GTVAutoSeg")
    run = logic.process(volumeNode)            # waits; run.segmentationNode holds the GTV
"""

import enum
import importlib
import logging
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from GTVAutoSegSlicerLib import (
    GTVAutoSegError,
    RunStatus,
    SegmentationLogic,
    SegmentationLogicProtocol,
    SegmentationParameters,
    SegmentationRun,
)
from GTVAutoSegSlicerLib.dependencies import ensureDependencies, isInteractive, missingRequirements
from GTVAutoSegSlicerLib.models import listModels, modelsJsonPath

PAPER = ("Shi et al., Rethinking automatic segmentation of gross target volume from a decoupling perspective, "
         "Computerized Medical Imaging and Graphics, 2024")
TERMINOLOGY_FILE = "Terminology/GTVAutoSeg-RadiotherapyTargets.term.json"
BROWSE = "__browse__"
POLL_INTERVAL_MS = 200


class GTVAutoSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GTV AutoSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Terminologies"]
        self.parent.contributors = ["GTVAutoSeg contributors"]
        self.parent.helpText = _(
            "Segments the gross tumour volume (GTV) on a CT: a ResNet18 classifier picks the axial slices "
            "that hold tumour and a SANet segments only those. The result is an editable segment with "
            "standard terminology; the slices whose probability is near the threshold are listed for review. "
            "For research use; every result must be reviewed by a clinician.<br>"
            "Batch use: <code>Slicer --no-main-window --python-script batch_segment.py --input ... --output ...</code>"
        )
        self.parent.acknowledgementText = _(
            "The method is the heterogeneous cascade framework of {paper}. Networks and training code are a "
            "re-implementation; see the model card of each model for its data and validation."
        ).format(paper=PAPER)
        slicer.app.connect("startupCompleted()", _registerTerminology)


def _registerTerminology() -> None:
    """Load the GTV terminology so the terminology selector offers it for manual segments too."""
    path = Path(__file__).resolve().parent / "Resources" / TERMINOLOGY_FILE
    try:
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(path))
    except Exception as exc:  # a missing Terminologies module must not stop the module loading
        logging.warning(f"GTVAutoSeg: terminology {path.name} not loaded: {exc}")


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self) -> str:
        return {"auto": _("Auto"), "cpu": _("CPU"), "cuda": _("GPU (CUDA)")}[self.value]


@parameterNodeWrapper
class GTVAutoSegParameterNode:
    """The GUI state. ``model`` is a Models.json name or a bundle path ("" = the default model); its
    selector is filled from Models.json at run time, so it is synchronised in code, not bound."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: Device = Device.AUTO
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    reviewMargin: Annotated[float, WithinRange(0.0, 0.5)] = 0.1
    show3D: bool = True


class GTVAutoSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Args:
        logic: anything that follows ``SegmentationLogicProtocol`` (a fake in widget tests).
    """

    def __init__(self, parent=None, logic: Optional[SegmentationLogicProtocol] = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = logic
        self._parameterNode: Optional[GTVAutoSegParameterNode] = None
        self._parameterNodeGuiTag = None
        self._run: Optional[SegmentationRun] = None
        self._models = []
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GTVAutoSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        if self.logic is None:
            self.logic = GTVAutoSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._timer.timeout.connect(self._poll)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelSelected)
        self.ui.show3DCheckBox.toggled.connect(self.onShow3DToggled)
        self.ui.reviewMarginSpinBox.valueChanged.connect(lambda _value: self._showReviewList())
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(lambda _node: self._showReviewList())
        self.ui.reviewListWidget.itemClicked.connect(self.onReviewItemClicked)
        self.ui.progressBar.visible = False
        self._populateModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        # Closing the module or Slicer must not leave an inference process behind.
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self._timer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode() if hasattr(self.logic, "getParameterNode") else None)
        node = self._parameterNode
        if node is not None and not node.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                node.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[GTVAutoSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()

    def _updateGui(self, caller=None, event=None) -> None:
        node = self._parameterNode
        if node is None:
            return
        running = self.logic.isRunning()
        self.ui.thresholdSliderWidget.enabled = not node.useModelThreshold and not running
        self._selectModelItem(node.model)
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running
        if running:
            self.ui.applyButton.text = _("Cancel")
            self.ui.applyButton.toolTip = _("Stop the segmentation; the output is left as it was.")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.text = _("Segment GTV")
            hasModel = bool(node.model) or bool(self._models)
            self.ui.applyButton.enabled = bool(node.inputVolume) and hasModel
            if not node.inputVolume:
                self.ui.applyButton.toolTip = _("Select an input CT volume.")
            elif not hasModel:
                self.ui.applyButton.toolTip = _("No model is installed: choose a model bundle file.")
            else:
                self.ui.applyButton.toolTip = _("Segment the gross tumour volume on the input CT.")

    # ------------------------------------------------------------------ models

    def _populateModels(self) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            self._models = listModels()
        except GTVAutoSegError as exc:
            self._models = []
            self._setStatus(str(exc), error=True)
        for info in sorted(self._models, key=lambda m: not m.default):
            combo.addItem(info.display_name(), info.name)
        if not self._models:
            combo.addItem(_("No model installed"), "")
        combo.addItem(_("Model bundle file..."), BROWSE)
        combo.blockSignals(wasBlocked)
        self._showModelCard()

    def _selectModelItem(self, model: str) -> None:
        combo = self.ui.modelComboBox
        index = combo.findData(model) if model else 0
        if index < 0:  # a bundle path chosen earlier
            combo.insertItem(combo.count - 1, Path(model).name, model)
            index = combo.findData(model)
        if index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)
        self._showModelCard()

    def onModelSelected(self, index: int) -> None:
        data = self.ui.modelComboBox.itemData(index)
        if data == BROWSE:
            path = qt.QFileDialog.getOpenFileName(
                slicer.util.mainWindow(), _("Select a GTVAutoSeg model bundle"), "", _("Model bundle (*.pt)"))
            data = path or (self._parameterNode.model if self._parameterNode else "")
        if self._parameterNode is not None:
            self._parameterNode.model = data or ""
        self._showModelCard()

    def _showModelCard(self) -> None:
        data = self.ui.modelComboBox.currentData
        info = next((m for m in self._models if m.name == data), None)
        if info is None:
            text = _("A model bundle file given by path: its card is in the bundle's provenance.") if data else ""
        else:
            text = info.card_text(modelsJsonPath().parent) or _("No model card.")
        browser = self.ui.modelCardTextBrowser
        browser.setMarkdown(text) if hasattr(browser, "setMarkdown") else browser.setPlainText(text)

    # ------------------------------------------------------------------ running

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            return
        node = self._parameterNode
        parameters = SegmentationParameters(
            model=node.model or None, device=node.device.value,
            threshold=None if node.useModelThreshold else float(node.threshold),
            reviewMargin=float(node.reviewMargin), createSurface=bool(node.show3D))
        try:
            with slicer.util.WaitCursor():
                ensureDependencies(confirm=self._confirm)
            self._run = self.logic.process(node.inputVolume, node.outputSegmentation, parameters,
                                           waitForCompletion=False, onProgress=self._onProgress,
                                           onFinished=self._onFinished)
        except GTVAutoSegError as exc:
            self._setStatus(str(exc), error=True)
            return
        self.ui.reviewListWidget.clear()
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = _("starting") + " %p%"
        self.ui.progressBar.visible = True
        self._setStatus(_("Segmenting the GTV..."))
        self._timer.start()
        self._updateGui()

    @staticmethod
    def _confirm(text: str) -> bool:
        # ensureDependencies only asks when Slicer has a main window and is not testing.
        return isInteractive() and slicer.util.confirmOkCancelDisplay(text)

    def _poll(self) -> None:
        if not self.logic.poll():
            self._timer.stop()

    def _onProgress(self, run: SegmentationRun) -> None:
        self.ui.progressBar.value = int(run.percent)
        self.ui.progressBar.format = f"{run.stage} %p%"

    def _onFinished(self, run: SegmentationRun) -> None:
        self._timer.stop()
        self.ui.progressBar.visible = False
        if run.status == RunStatus.SUCCEEDED:
            self._parameterNode.outputSegmentation = run.segmentationNode
            slicer.util.setSliceViewerLayers(background=run.inputVolumeNode, fit=False)
            self._setStatus(run.message)
            self._showReviewList()
        elif run.status == RunStatus.CANCELLED:
            self._setStatus(_("Cancelled; the output segmentation was left as it was."))
        else:
            self._setStatus(run.message, error=True)
        self._updateGui()

    def _setStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: #c62828" if error else ""
        (logging.error if error else logging.info)(f"GTVAutoSeg: {text}")

    # ------------------------------------------------------------------ after a run

    def onShow3DToggled(self, checked: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None and not self.logic.isRunning():
            with slicer.util.WaitCursor():
                self.logic.setSurfaceVisible(segmentation, checked)

    def _showReviewList(self) -> None:
        listWidget = self.ui.reviewListWidget
        listWidget.clear()
        node = self._parameterNode
        if node is None or node.outputSegmentation is None or self.logic.isRunning():
            return
        for item in self.logic.reviewList(node.outputSegmentation, float(node.reviewMargin)):
            entry = qt.QListWidgetItem(item.label())
            entry.setData(qt.Qt.UserRole, list(item.ras))
            listWidget.addItem(entry)

    def onReviewItemClicked(self, item) -> None:
        r, a, s = item.data(qt.Qt.UserRole)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def onReload(self) -> None:
        for name in ("errors", "process", "nodes", "review", "models", "dependencies", "logic", "testing"):
            module = importlib.import_module(f"GTVAutoSegSlicerLib.{name}")
            importlib.reload(module)
        importlib.reload(importlib.import_module("GTVAutoSegSlicerLib"))
        ScriptedLoadableModuleWidget.onReload(self)


class GTVAutoSegLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """The module logic Slicer creates: ``SegmentationLogic`` on ``slicer.mrmlScene`` plus the parameter node."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, slicer.mrmlScene)

    def getParameterNode(self) -> GTVAutoSegParameterNode:
        return GTVAutoSegParameterNode(super().getParameterNode())


class GTVAutoSegTest(ScriptedLoadableModuleTest):
    """Inside Slicer: a phantom CT through the module logic, with a test bundle whose output is known.
    The full suite runs with pytest and slicer-core (tests/test_slicer_*.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_phantom()

    def test_segment_phantom(self):
        import tempfile

        import SimpleITK as sitk

        from GTVAutoSegLib.phantom import make_phantom
        from GTVAutoSegSlicerLib import testing

        missing = missingRequirements()
        if missing:
            # The extension's CI has no torch; installing gigabytes there is not the test's job.
            self.delayDisplay(f"Skipped: install {', '.join(missing)} (open the module once) to run this test")
            return
        self.delayDisplay("Segmenting a phantom CT")
        with tempfile.TemporaryDirectory() as tmp:
            ct, _mask = make_phantom(shape=(6, 64, 64), spacing=(2.0, 2.0, 3.0), seed=0)
            ctPath = Path(tmp) / "phantom.nrrd"
            sitk.WriteImage(ct.to_sitk(), str(ctPath))
            volume = slicer.util.loadVolume(str(ctPath))
            bundle = testing.makeBundle(Path(tmp) / "test.pt", "foreground")
            logic = GTVAutoSegLogic()
            run = logic.process(volume, parameters=SegmentationParameters(model=str(bundle), device="cpu"))
        segmentation = run.segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 1)
        self.assertEqual(segmentation.GetNthSegment(0).GetName(), "GTV")
        self.assertEqual(run.tableNode.GetNumberOfRows(), 6)
        self.assertGreater(run.report["volume_cc"], 0.0)
        self.delayDisplay("Test passed")
