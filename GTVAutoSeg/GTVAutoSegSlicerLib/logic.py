"""GTV segmentation of a volume node, without Qt: write the CT, run the CLI in a subprocess, read
the result into a segmentation node.

Usage from a script (blocks until done)::

    logic = SegmentationLogic(slicer.mrmlScene)
    run = logic.process(volumeNode)                       # waitForCompletion=True
    segmentationNode = run.segmentationNode

From the widget (returns at once; a timer calls ``poll``)::

    run = logic.process(volumeNode, segmentationNode, parameters, waitForCompletion=False,
                        onProgress=showProgress, onFinished=showResult)
    ...
    logic.cancel()   # ends the whole process tree; the output node is left untouched

The output node is filled only after the subprocess has finished successfully, so a failed or
cancelled run leaves no half-filled node behind (and creates none).
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .errors import GTVAutoSegError
from .models import libraryFolder
from .nodes import (
    ATTRIBUTE_PREFIX,
    PROBABILITY_TABLE_REFERENCE_ROLE,
    checkInputVolume,
    fillProbabilityTable,
    fillSegmentation,
    probabilityTableFor,
    readProbabilityTable,
    readSegmentationFile,
    setSurface,
    sliceCentresRas,
    writeVolume,
)
from .process import InferenceProcess, ProcessProtocol, parseProgressLine, pythonExecutable
from .review import ReviewSlice, reviewSlices

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CASE_NAME = "gtv"  # file stem of the CLI's outputs in the run's private folder
# The GTV terminology when a result file carries none (Slicer's TerminologyEntry format).
DEFAULT_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^86049000^Neoplasm, Primary~^^"
    "~Anatomic codes - DICOM master list~^^~^^"
)


class GTVAutoSegCancelled(GTVAutoSegError):
    """``process(waitForCompletion=True)`` was cancelled (from a progress callback or another thread)."""


class RunStatus(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class SegmentationParameters:
    """What one run needs besides the input volume.

    Args:
        model: a model name from Models.json or a bundle file path; None takes the default model.
        device: ``auto``, ``cpu`` or ``cuda``.
        threshold: classifier threshold; None takes the model's own.
        reviewMargin: slices within this probability distance of the threshold are listed for review.
        createSurface: make the closed surface for the 3D view.
        segmentName: name of the segment.
    """

    model: str | None = None
    device: str = "auto"
    threshold: float | None = None
    reviewMargin: float = 0.1
    createSurface: bool = True
    segmentName: str = "GTV"

    def check(self) -> None:
        if self.device not in DEVICES:
            raise GTVAutoSegError(f"device must be one of {', '.join(DEVICES)}, not '{self.device}'")
        if self.threshold is not None and not 0.0 <= float(self.threshold) <= 1.0:
            raise GTVAutoSegError(f"threshold must lie in [0, 1], not {self.threshold}")
        if not 0.0 <= float(self.reviewMargin) <= 1.0:
            raise GTVAutoSegError(f"review margin must lie in [0, 1], not {self.reviewMargin}")


@dataclass
class SegmentationRun:
    """The state of one run, updated by ``poll`` and handed to the callbacks.

    Attributes:
        status: running, succeeded, failed or cancelled.
        percent, stage: the last progress line of the CLI (0-100 and its stage name).
        message: a one-line status or error text for the user.
        pid: the inference process id (its process group id on POSIX).
        segmentationNode, tableNode: filled on success only.
        report: the CLI's ``_report.json`` (volume, slices, probabilities, timings, model).
        reviewSlices: slices near the threshold, closest first.
        seconds: wall time of the run.
    """

    status: RunStatus = RunStatus.RUNNING
    percent: float = 0.0
    stage: str = "starting"
    message: str = "starting"
    pid: int | None = None
    inputVolumeNode: object = None
    segmentationNode: object = None
    tableNode: object = None
    report: dict = field(default_factory=dict)
    reviewSlices: list[ReviewSlice] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status != RunStatus.RUNNING


RunCallback = Callable[[SegmentationRun], None]
ProcessFactory = Callable[[list[str], dict[str, str]], ProcessProtocol]


class SegmentationLogicProtocol(Protocol):
    """What the widget needs from the logic (tests pass a fake)."""

    def process(self, inputVolume, outputSegmentation=None, parameters: SegmentationParameters | None = None,
                waitForCompletion: bool = True, onProgress: RunCallback | None = None,
                onFinished: RunCallback | None = None) -> SegmentationRun: ...

    def poll(self) -> bool: ...

    def cancel(self) -> None: ...

    def isRunning(self) -> bool: ...

    def setSurfaceVisible(self, segmentationNode, visible: bool) -> None: ...

    def reviewList(self, segmentationNode, margin: float) -> list[ReviewSlice]: ...


@dataclass
class _Active:
    run: SegmentationRun
    process: ProcessProtocol
    workDir: Path
    outputNode: object
    parameters: SegmentationParameters
    onProgress: RunCallback | None
    onFinished: RunCallback | None
    started: float


class SegmentationLogic:
    """Runs the GTVAutoSeg CLI on volume nodes of one MRML scene. One run at a time.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` inside Slicer; a ``vtkMRMLScene`` in tests).
        python: interpreter for the CLI; default ``PythonSlicer`` inside Slicer, else ``sys.executable``.
        processFactory: ``(args, env) -> process``; the default starts an :class:`InferenceProcess`.
        pollInterval: seconds between polls while ``process`` waits for completion.
    """

    def __init__(self, scene=None, python: str | None = None, processFactory: ProcessFactory | None = None,
                 pollInterval: float = 0.1):
        if scene is None:
            import slicer

            scene = getattr(slicer, "mrmlScene", None)
            if scene is None:
                raise GTVAutoSegError("no MRML scene: pass one (outside Slicer, a slicer.vtkMRMLScene())")
        self.scene = scene
        self.python = python or pythonExecutable()
        self.processFactory = processFactory or (lambda args, env: InferenceProcess(args, env=env))
        self.pollInterval = pollInterval
        self._active: _Active | None = None

    # ------------------------------------------------------------------------------ running

    def isRunning(self) -> bool:
        return self._active is not None

    def commandLine(self, inputPath: Path, outputDir: Path, parameters: SegmentationParameters) -> list[str]:
        args = [self.python, "-m", "GTVAutoSegLib.cli", "segment", str(inputPath), "-o", str(outputDir),
                "--device", parameters.device, "--progress", "lines", "--name", CASE_NAME]
        if parameters.model:
            args += ["--model", str(parameters.model)]
        if parameters.threshold is not None:
            args += ["--threshold", repr(float(parameters.threshold))]
        return args

    @staticmethod
    def childEnvironment() -> dict[str, str]:
        """Our environment, with the folder holding GTVAutoSegLib first on PYTHONPATH.

        Inside Slicer the library sits in the scripted-modules folder, which Slicer adds to its
        own ``sys.path`` but a fresh ``PythonSlicer`` does not know about.
        """
        env = dict(os.environ)
        libParent = str(libraryFolder().parent)
        env["PYTHONPATH"] = os.pathsep.join([libParent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def process(self, inputVolume, outputSegmentation=None, parameters: SegmentationParameters | None = None,
                waitForCompletion: bool = True, onProgress: RunCallback | None = None,
                onFinished: RunCallback | None = None) -> SegmentationRun:
        """Segment the GTV on ``inputVolume``.

        Args:
            inputVolume: a ``vtkMRMLScalarVolumeNode`` holding a CT in Hounsfield units.
            outputSegmentation: the segmentation node to (re)fill; None creates one on success.
            parameters: model, device, threshold...; defaults when None.
            waitForCompletion: True (scripts) blocks until the run has ended; False (the widget)
                returns at once and the caller calls :meth:`poll` on a timer.
            onProgress: called with the run after each progress line.
            onFinished: called once with the run when it has succeeded, failed or been cancelled.

        Returns:
            The run. With ``waitForCompletion`` it has succeeded (failures raise).

        Raises:
            GTVAutoSegError: invalid input, a run already in progress, or (waiting) a failed run.
            GTVAutoSegCancelled: (waiting) the run was cancelled.
        """
        if self.isRunning():
            raise GTVAutoSegError("a segmentation is already running; cancel it or wait for it to finish")
        parameters = parameters or SegmentationParameters()
        parameters.check()
        checkInputVolume(inputVolume)
        workDir = Path(tempfile.mkdtemp(prefix="GTVAutoSeg-"))
        try:
            inputPath = writeVolume(inputVolume, workDir / "input.nrrd")
            args = self.commandLine(inputPath, workDir / "output", parameters)
            logger.info("GTVAutoSeg: %s", " ".join(args))
            process = self.processFactory(args, self.childEnvironment())
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        run = SegmentationRun(pid=process.pid, inputVolumeNode=inputVolume, message="running")
        self._active = _Active(run, process, workDir, outputSegmentation, parameters, onProgress, onFinished,
                               time.monotonic())
        if not waitForCompletion:
            return run
        try:
            while self.poll():
                time.sleep(self.pollInterval)
        except BaseException:
            self.cancel()  # e.g. KeyboardInterrupt in a script: leave no process behind
            raise
        if run.status == RunStatus.FAILED:
            raise GTVAutoSegError(run.message)
        if run.status == RunStatus.CANCELLED:
            raise GTVAutoSegCancelled(run.message)
        return run

    def poll(self) -> bool:
        """Read the process's output, report progress, and finish the run once it has exited.

        Call from the thread that owns the scene. Returns True while the run goes on.
        """
        active = self._active
        if active is None:
            return False
        self._consumeOutput(active)
        code = active.process.returnCode()
        if code is None:
            return True
        self._consumeOutput(active)  # lines written just before exit
        self._finish(active, code)
        return False

    def _consumeOutput(self, active: _Active) -> None:
        progressed = False
        for stream, line in active.process.readLines():
            progress = parseProgressLine(line) if stream == "stdout" else None
            if progress is not None:
                active.run.percent, active.run.stage = progress.percent, progress.stage
                active.run.message = f"{progress.stage} ({progress.percent:.0f}%)"
                progressed = True
            elif line.strip():
                (logger.warning if stream == "stderr" else logger.info)("GTVAutoSeg: %s", line)
        active.run.seconds = time.monotonic() - active.started
        if progressed and active.onProgress is not None:
            active.onProgress(active.run)

    def cancel(self) -> None:
        """End the running inference and everything it started; the output node stays as it was."""
        active = self._active
        if active is None:
            return
        try:
            active.process.terminateTree()
        finally:
            active.run.status = RunStatus.CANCELLED
            active.run.message = "cancelled"
            self._cleanUp(active)

    def _finish(self, active: _Active, code: int) -> None:
        run = active.run
        try:
            if code == 0:
                self._loadResult(active)
                run.status = RunStatus.SUCCEEDED
                run.percent = 100.0
                run.message = self._summary(run)
            elif code == 130:
                run.status = RunStatus.CANCELLED
                run.message = "cancelled"
            else:
                run.status = RunStatus.FAILED
                run.message = self._errorMessage(active.process.stderrTail(), code)
        except GTVAutoSegError as exc:
            run.status = RunStatus.FAILED
            run.message = str(exc)
        finally:
            self._cleanUp(active)

    def _cleanUp(self, active: _Active) -> None:
        active.run.seconds = time.monotonic() - active.started
        shutil.rmtree(active.workDir, ignore_errors=True)
        self._active = None
        if active.onFinished is not None:
            active.onFinished(active.run)

    @staticmethod
    def _errorMessage(stderrLines: list[str], code: int) -> str:
        for line in reversed(stderrLines):
            if line.startswith("gtvautoseg: error:"):
                return line[len("gtvautoseg: error:"):].strip()
        lines = [line for line in stderrLines if line.strip()]
        if code < 0:
            return f"the inference process was ended by signal {-code}"
        if lines:
            return f"the inference failed (exit status {code}): {lines[-1].strip()}"
        return f"the inference failed (exit status {code})"

    @staticmethod
    def _summary(run: SegmentationRun) -> str:
        r = run.report
        return (f"GTV {r.get('volume_cc', 0.0):.1f} cc on {r.get('slices_segmented', 0)}/{r.get('slices_total', 0)} "
                f"slices in {run.seconds:.1f} s; {len(run.reviewSlices)} slice(s) to review")

    # ------------------------------------------------------------------------------ results

    def _loadResult(self, active: _Active) -> None:
        """Read the CLI's outputs, check them, and only then create/fill the nodes."""
        outputDir = active.workDir / "output"
        volume = active.run.inputVolumeNode
        if volume.GetScene() is not self.scene:
            raise GTVAutoSegError("the input volume was removed from the scene during the segmentation")
        try:
            report = json.loads((outputDir / f"{CASE_NAME}_report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise GTVAutoSegError(f"the inference wrote no readable report ({exc})") from None
        segmentation = readSegmentationFile(outputDir / f"{CASE_NAME}.seg.nrrd")
        # null: the classifier did not run (segmenter alone)
        probabilities = [math.nan if p is None else float(p) for p in report.get("slice_probabilities", [])]
        threshold = float(report.get("threshold", 0.5))
        nk = volume.GetImageData().GetDimensions()[2]
        if len(probabilities) != nk:
            raise GTVAutoSegError(f"the inference reported {len(probabilities)} slice probabilities for "
                                  f"{nk} slices (is the CT acquired axially?)")

        outputNode = active.outputNode
        if outputNode is None or outputNode.GetScene() is not self.scene:
            outputNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} GTV")
        params = active.parameters
        fillSegmentation(outputNode, segmentation, volume, params.segmentName,
                         defaultTerminology=DEFAULT_TERMINOLOGY, createSurface=params.createSurface)
        model = report.get("model", {})
        for key, value in (("model", f"{model.get('name', '')}@{model.get('version', '')}"),
                           ("threshold", repr(threshold)), ("inputVolumeID", volume.GetID()),
                           ("volumeCc", repr(float(report.get("volume_cc", 0.0))))):
            outputNode.SetAttribute(ATTRIBUTE_PREFIX + key, value)

        tableNode = probabilityTableFor(outputNode)
        if tableNode is None:
            tableNode = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{outputNode.GetName()} slice probabilities")
            outputNode.SetNodeReferenceID(PROBABILITY_TABLE_REFERENCE_ROLE, tableNode.GetID())
        fillProbabilityTable(tableNode, probabilities, threshold, volume)

        active.run.segmentationNode = outputNode
        active.run.tableNode = tableNode
        active.run.report = report
        active.run.reviewSlices = reviewSlices(probabilities, sliceCentresRas(volume), threshold, params.reviewMargin)

    # ------------------------------------------------------------------------------ after a run

    def setSurfaceVisible(self, segmentationNode, visible: bool) -> None:
        """The "Show 3D" toggle: create or drop the closed surface."""
        if segmentationNode is not None:
            setSurface(segmentationNode, visible)

    def reviewList(self, segmentationNode, margin: float) -> list[ReviewSlice]:
        """The review list of a segmentation this logic filled (empty if it has no probability table)."""
        tableNode = probabilityTableFor(segmentationNode) if segmentationNode is not None else None
        if tableNode is None:
            return []
        probabilities, centres, threshold = readProbabilityTable(tableNode)
        return reviewSlices(probabilities, centres, threshold, margin)
