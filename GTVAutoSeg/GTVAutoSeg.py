"""GTVAutoSeg: radiotherapy target volume segmentation on CT (GTV, or the target a model was trained
on, e.g. PTV70), as a 3D Slicer module. Supports 3D Slicer 5.10 and later (``SUPPORTED_SLICER``).

A thin shell: this widget -> ``GTVAutoSegSlicerLib.logic`` (MRML, no Qt) -> the ``gtvautoseg`` CLI
in a separate process -> ``GTVAutoSegLib`` (no Slicer). Scripts call the logic directly::

    logic = slicer.util.getModuleLogic("GTVAutoSeg")
    run = logic.process(volumeNode)            # waits; run.segmentationNode holds the target
    logic.resegmentSlices(run.segmentationNode, include=[41], exclude=[57])   # the reviewer's corrections
"""

import importlib
import logging
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
    SUPPORTED_SLICER,
    GTVAutoSegError,
    RunStatus,
    SegmentationLogic,
    SegmentationLogicProtocol,
    SegmentationParameters,
    SegmentationRun,
    sliceChanges,
)
from GTVAutoSegSlicerLib.dependencies import (ensureDependencies, ensureExportDependencies, isInteractive,
                                               missingRequirements)
from GTVAutoSegSlicerLib.modelchoice import ModelChoice
from GTVAutoSegSlicerLib.models import listModels, modelsJsonPath

PAPER = ("Shi et al., Rethinking automatic segmentation of gross target volume from a decoupling perspective, "
         "Computerized Medical Imaging and Graphics, 2024")
BATCH_SCRIPT = "Scripts/batch_segment.py"  # a resource: never at the top of qt-scripted-modules
POLL_INTERVAL_MS = 200


class GTVAutoSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GTV AutoSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Terminologies", "SubjectHierarchy"]
        self.parent.contributors = ["GTVAutoSeg developers (GTVAutoSeg open-source project)"]
        self.parent.helpText = _(
            "Contours the radiotherapy target volume on a CT: a ResNet18 classifier picks the axial slices "
            "that hold tumour and a SANet segments only those. The segment is named and coded after the "
            "model's target (the shipped model: head-and-neck PTV70). Slices whose probability is near the "
            "threshold are listed for review: tick a slice the classifier missed or untick one it wrongly "
            "kept, and re-segment only those slices. For research use; every result must be reviewed by a "
            "clinician. Needs 3D Slicer {version} or later.<br>"
            "Batch use: <code>Slicer --no-main-window --python-script "
            "&lt;module folder&gt;/Resources/{script} --input ... --output ...</code>"
        ).format(version=SUPPORTED_SLICER, script=BATCH_SCRIPT)
        self.parent.acknowledgementText = _(
            "The method is the heterogeneous cascade framework of {paper}. Networks and training code are a "
            "re-implementation; see the model card of each model for its data and validation."
        ).format(paper=PAPER)
        slicer.app.connect("startupCompleted()", _onStartup)


def _onStartup() -> None:
    """Load the target terminology (so the terminology selector resolves our segments) and warn on
    a Slicer older than the supported one."""
    version = (slicer.app.majorVersion, slicer.app.minorVersion)
    if version < tuple(int(v) for v in SUPPORTED_SLICER.split(".")):
        logging.warning(f"GTVAutoSeg supports 3D Slicer {SUPPORTED_SLICER} and later; this is {version[0]}.{version[1]}")
    try:
        from GTVAutoSegSlicerLib.terminology import registerTerminology

        registerTerminology(slicer.modules.terminologies.logic())
    except Exception as exc:  # a missing Terminologies module must not stop the module loading
        logging.warning(f"GTVAutoSeg: the target terminology was not loaded: {exc}")


@parameterNodeWrapper
class GTVAutoSegParameterNode:
    """The GUI state. ``model`` (a Models.json name or a bundle path, "" = the default model) and
    ``device`` (``auto``, ``cpu``, ``cuda:N``, ``mps``) have selectors filled at run time, so they
    are synchronised in code, not bound."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    model: str = ""
    device: str = "auto"
    useModelThreshold: bool = True
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    reviewMargin: Annotated[float, WithinRange(0.0, 1.0)] = 0.1
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
        self._modelChoice: Optional[ModelChoice] = None
        self._reviewItems = []
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
        self._modelChoice = ModelChoice(self.ui.modelComboBox, self._askForBundle)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._timer.timeout.connect(self._poll)
        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.resegmentButton.clicked.connect(self.onResegmentButton)
        self.ui.exportDicomButton.clicked.connect(self.onExportDicomButton)
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelSelected)
        self.ui.deviceComboBox.currentIndexChanged.connect(self.onDeviceSelected)
        self.ui.show3DCheckBox.toggled.connect(self.onShow3DToggled)
        self.ui.reviewMarginSpinBox.valueChanged.connect(lambda _value: self._showReviewList())
        self.ui.outputSegmentationSelector.currentNodeChanged.connect(lambda _node: self._showReviewList())
        self.ui.reviewListWidget.itemClicked.connect(self.onReviewItemClicked)
        self.ui.reviewListWidget.itemChanged.connect(lambda _item: self._updateResegmentButton())
        self.ui.progressBar.visible = False
        self._populateModels()
        self._populateDevices()
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
        if node.model != self._modelChoice.current:
            self._modelChoice.show(node.model)
            self._showModelCard()
        self._selectDevice(node.device)
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
                self.ui.applyButton.toolTip = _("Segment the model's target volume on the input CT.")
        self._updateResegmentButton()

    # ------------------------------------------------------------------ models and devices

    def _populateModels(self) -> None:
        try:
            self._models = listModels()
        except GTVAutoSegError as exc:
            self._models = []
            self._setStatus(str(exc), error=True)
        self._modelChoice.setModels(self._models)
        self._showModelCard()

    def _askForBundle(self) -> str:
        return qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Select a GTVAutoSeg model bundle"), "", _("Model bundle (*.pt)"))

    def onModelSelected(self, index: int) -> None:
        model = self._modelChoice.choose(index)  # opens the file dialog once for "Model bundle file..."
        if self._parameterNode is not None:
            self._parameterNode.model = model
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

    def _populateDevices(self) -> None:
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        try:
            choices = SegmentationLogic.deviceChoices()
        except Exception as exc:  # a broken torch must not keep the module from opening
            logging.warning(f"GTVAutoSeg: could not list the devices: {exc}")
            choices = [("auto", _("Auto")), ("cpu", _("CPU"))]
        for name, label in choices:
            combo.addItem(label, name)
        combo.blockSignals(wasBlocked)

    def _selectDevice(self, device: str) -> None:
        combo = self.ui.deviceComboBox
        index = combo.findData(device)
        if index < 0:  # a device saved in a scene that this machine lacks: offer it, the run will say why
            combo.addItem(device, device)
            index = combo.findData(device)
        if index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def onDeviceSelected(self, index: int) -> None:
        if self._parameterNode is not None:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    # ------------------------------------------------------------------ running

    def _parameters(self) -> SegmentationParameters:
        node = self._parameterNode
        return SegmentationParameters(
            model=node.model or None, device=node.device,
            threshold=None if node.useModelThreshold else float(node.threshold),
            reviewMargin=float(node.reviewMargin), createSurface=bool(node.show3D))

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            return
        node = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("GTVAutoSeg could not start the segmentation."), waitCursor=True):
            try:
                self._installDependencies()
                self._run = self.logic.process(node.inputVolume, node.outputSegmentation, self._parameters(),
                                               waitForCompletion=False, onProgress=self._onProgress,
                                               onFinished=self._onFinished, onLog=self._log)
            except GTVAutoSegError as exc:  # user-fixable: one line in the status, no dialog
                self._setStatus(str(exc), error=True)
                return
        self._started(_("Segmenting..."))

    def onResegmentButton(self) -> None:
        node = self._parameterNode
        include, exclude = sliceChanges(self._reviewItems, self._tickedSlices())
        with slicer.util.tryWithErrorDisplay(_("GTVAutoSeg could not re-segment the slices."), waitCursor=True):
            try:
                if include:
                    self._installDependencies()
                self._run = self.logic.resegmentSlices(node.outputSegmentation, include, exclude, self._parameters(),
                                                       waitForCompletion=False, onProgress=self._onProgress,
                                                       onFinished=self._onFinished, onLog=self._log)
            except GTVAutoSegError as exc:
                self._setStatus(str(exc), error=True)
                return
        if self.logic.isRunning():  # emptying slices only is done already
            self._started(_("Re-segmenting {count} slice(s)...").format(count=len(include)))

    def _installDependencies(self) -> None:
        if not missingRequirements():
            return
        self._setStatus(_("Installing the Python packages GTVAutoSeg needs (see the log)..."))
        self.ui.logCollapsibleButton.collapsed = False
        self.ui.progressBar.visible = True
        self.ui.progressBar.setRange(0, 0)  # busy: the installers report lines, not percentages
        slicer.app.processEvents()
        try:
            ensureDependencies(confirm=self._confirm, log=self._log)
        finally:
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.visible = False

    def _started(self, text: str) -> None:
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = _("starting") + " %p%"
        self.ui.progressBar.visible = True
        self._setStatus(text)
        self._timer.start()
        self._updateGui()

    @staticmethod
    def _confirm(text: str) -> bool:
        # ensureDependencies only asks when Slicer has a main window and is not testing.
        return isInteractive() and slicer.util.confirmOkCancelDisplay(text)

    def _poll(self) -> None:
        try:
            if not self.logic.poll():
                self._timer.stop()
        except Exception:
            # Never let a failing poll repeat every 200 ms: stop, end the process, show the error.
            self._timer.stop()
            self.logic.cancel()
            with slicer.util.tryWithErrorDisplay(_("GTVAutoSeg stopped with an unexpected error.")):
                raise

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

    def _log(self, line: str) -> None:
        self.ui.logTextEdit.appendPlainText(f"{qt.QTime.currentTime().toString('HH:mm:ss')}  {line}")
        slicer.app.processEvents()  # installers block; let the log show each step as it comes

    # ------------------------------------------------------------------ after a run

    def onShow3DToggled(self, checked: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None and not self.logic.isRunning():
            with slicer.util.WaitCursor():
                self.logic.setSurfaceVisible(segmentation, checked)

    def _showReviewList(self) -> None:
        listWidget = self.ui.reviewListWidget
        wasBlocked = listWidget.blockSignals(True)
        listWidget.clear()
        self._reviewItems = []
        node = self._parameterNode
        if node is not None and node.outputSegmentation is not None and not self.logic.isRunning():
            self._reviewItems = self.logic.reviewList(node.outputSegmentation, float(node.reviewMargin))
        for item in self._reviewItems:
            entry = qt.QListWidgetItem(item.label())
            entry.setData(qt.Qt.UserRole, list(item.ras))
            entry.setFlags(entry.flags() | qt.Qt.ItemIsUserCheckable)
            entry.setCheckState(qt.Qt.Checked if item.selected else qt.Qt.Unchecked)
            listWidget.addItem(entry)
        listWidget.blockSignals(wasBlocked)
        self._updateResegmentButton()

    def _tickedSlices(self) -> dict:
        listWidget = self.ui.reviewListWidget
        return {item.sliceIndex: listWidget.item(row).checkState() == qt.Qt.Checked
                for row, item in enumerate(self._reviewItems)}

    def _updateResegmentButton(self) -> None:
        include, exclude = sliceChanges(self._reviewItems, self._tickedSlices()) if self._reviewItems else ([], [])
        self.ui.resegmentButton.enabled = bool(include or exclude) and not self.logic.isRunning()
        node = self._parameterNode
        self.ui.exportDicomButton.enabled = (node is not None and node.outputSegmentation is not None
                                             and not self.logic.isRunning())

    def onExportDicomButton(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        outputFolder = qt.QFileDialog.getExistingDirectory(self.parent, _("Folder for the DICOM SEG and RTSTRUCT"))
        if not outputFolder:
            return
        dicomFolder = None
        if not self.logic.knowsDicomSeries(segmentation):
            dicomFolder = qt.QFileDialog.getExistingDirectory(self.parent, _("DICOM folder of the CT series"))
            if not dicomFolder:
                return
        with slicer.util.tryWithErrorDisplay(_("GTVAutoSeg could not export DICOM."), waitCursor=True):
            try:
                ensureExportDependencies(confirm=self._confirm, log=self._log)
                written = self.logic.exportDicom(segmentation, outputFolder, dicomFolder=dicomFolder)
            except GTVAutoSegError as exc:
                self._setStatus(str(exc), error=True)
                return
            self._setStatus(_("Exported {files}").format(files=", ".join(p.name for p in written)))
            for path in written:
                self._log(str(path))

    def onReviewItemClicked(self, item) -> None:
        r, a, s = item.data(qt.Qt.UserRole)
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, r, a, s, slicer.vtkMRMLSliceNode.CenteredJumpSlice)

    def onReload(self) -> None:
        for name in ("errors", "process", "review", "nodes", "terminology", "results", "models", "modelchoice",
                     "dependencies", "logic", "testing"):
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
    """Inside Slicer (Reload and Test, and the extension's ctest): ``GTVAutoSegSlicerLib.testing.runSelfTest``,
    the same body the pytest suite runs with slicer-core (tests/test_slicer_selftest.py)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_and_correct_slices()

    def test_segment_and_correct_slices(self):
        import tempfile

        from GTVAutoSegSlicerLib import testing

        missing = missingRequirements()
        if missing:
            # The extension's CI has no torch; installing gigabytes there is not the test's job.
            self.delayDisplay(f"Skipped: install {', '.join(missing)} (open the module once) to run this test")
            return
        with tempfile.TemporaryDirectory() as tmp:
            testing.runSelfTest(slicer.mrmlScene, tmp, log=self.delayDisplay)
