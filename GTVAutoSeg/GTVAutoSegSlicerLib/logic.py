"""Target segmentation of a volume node, without Qt: write the CT, run the CLI in a subprocess, read
the result into a segmentation node; and re-segmenting the slices a reviewer corrected.

Usage from a script (blocks until done)::

    logic = SegmentationLogic(slicer.mrmlScene)
    run = logic.process(volumeNode)                       # waitForCompletion=True
    segmentationNode = run.segmentationNode

From the widget (returns at once; a timer calls ``poll``)::

    run = logic.process(volumeNode, segmentationNode, parameters, waitForCompletion=False,
                        onProgress=showProgress, onFinished=showResult, onLog=appendToLog)
    ...
    logic.cancel()   # ends the whole process tree; the output node is left untouched

After review (the reviewer ticked slices the classifier missed and unticked one it wrongly kept)::

    logic.resegmentSlices(segmentationNode, include=[41, 42], exclude=[57])

runs only the segmenter, on exactly slices 41 and 42, empties slice 57, and leaves every other
slice (manual edits included) as it was.

The output node is filled only after the subprocess has finished successfully, so a failed or
cancelled run leaves no half-filled node behind (and creates none).
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import results
from .errors import GTVAutoSegError
from .models import libraryFolder
from .nodes import checkInputVolume, probabilityTableFor, readProbabilityTable, setSurface, writeVolume
from .process import InferenceProcess, ProcessProtocol, parseProgressLine, pythonExecutable
from .review import ReviewSlice, reviewSlices

logger = logging.getLogger(__name__)

CASE_NAME = "target"  # file stem of the CLI's outputs in the run's private folder


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
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``GTVAutoSegLib.device``).
        threshold: classifier threshold; None takes the model's own.
        reviewMargin: slices within this probability distance of the threshold are listed for review.
        createSurface: make the closed surface for the 3D view.
        segmentName: name of the segment; None names it after the model's target (e.g. "PTV70").
    """

    model: str | None = None
    device: str = "auto"
    threshold: float | None = None
    reviewMargin: float = 0.1
    createSurface: bool = True
    segmentName: str | None = None

    def check(self) -> None:
        from GTVAutoSegLib.device import check_device_name
        from GTVAutoSegLib.errors import GTVError

        try:
            self.device = check_device_name(self.device)
        except GTVError as exc:
            raise GTVAutoSegError(str(exc)) from None
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
        included, excluded: (re-segmenting) the slices the segmenter ran on / that were emptied.
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
    included: list[int] = field(default_factory=list)
    excluded: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status != RunStatus.RUNNING


RunCallback = Callable[[SegmentationRun], None]
LogCallback = Callable[[str], None]
ProcessFactory = Callable[[list[str], dict[str, str]], ProcessProtocol]


class SegmentationLogicProtocol(Protocol):
    """What the widget needs from the logic (tests pass a fake)."""

    def process(self, inputVolume, outputSegmentation=None, parameters: SegmentationParameters | None = None,
                waitForCompletion: bool = True, onProgress: RunCallback | None = None,
                onFinished: RunCallback | None = None, onLog: LogCallback | None = None) -> SegmentationRun: ...

    def resegmentSlices(self, segmentationNode, include: Iterable[int] = (), exclude: Iterable[int] = (),
                        parameters: SegmentationParameters | None = None, waitForCompletion: bool = True,
                        onProgress: RunCallback | None = None, onFinished: RunCallback | None = None,
                        onLog: LogCallback | None = None) -> SegmentationRun: ...

    def poll(self) -> bool: ...

    def cancel(self) -> None: ...

    def isRunning(self) -> bool: ...

    def setSurfaceVisible(self, segmentationNode, visible: bool) -> None: ...

    def reviewList(self, segmentationNode, margin: float) -> list[ReviewSlice]: ...

    def knowsDicomSeries(self, segmentationNode) -> bool: ...

    def exportDicom(self, segmentationNode, outputFolder, formats=("seg", "rtstruct"), dicomFolder=None,
                    name: str | None = None) -> list[Path]: ...


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
    load: Callable[[SegmentationRun, Path], None]  # reads the CLI's output folder into the scene
    onLog: LogCallback | None = None

    def log(self, line: str) -> None:
        logger.info("GTVAutoSeg: %s", line)
        if self.onLog is not None:
            self.onLog(line)


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

    def commandLine(self, inputPath: Path, outputDir: Path, parameters: SegmentationParameters,
                    onlySlices: Iterable[int] | None = None) -> list[str]:
        args = [self.python, "-m", "GTVAutoSegLib.cli", "segment", str(inputPath), "-o", str(outputDir),
                "--device", parameters.device, "--progress", "lines", "--name", CASE_NAME]
        if parameters.model:
            args += ["--model", str(parameters.model)]
        if parameters.threshold is not None:
            args += ["--threshold", repr(float(parameters.threshold))]
        if onlySlices is not None:
            args += ["--only-slices", ",".join(str(k) for k in sorted(onlySlices))]
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
                onFinished: RunCallback | None = None, onLog: LogCallback | None = None) -> SegmentationRun:
        """Segment the model's target volume on ``inputVolume``.

        Args:
            inputVolume: a ``vtkMRMLScalarVolumeNode`` holding a CT in Hounsfield units.
            outputSegmentation: the segmentation node to (re)fill; None creates one on success.
            parameters: model, device, threshold...; defaults when None.
            waitForCompletion: True (scripts) blocks until the run has ended; False (the widget)
                returns at once and the caller calls :meth:`poll` on a timer.
            onProgress: called with the run after each progress line.
            onFinished: called once with the run when it has succeeded, failed or been cancelled.
            onLog: called with each line for the user's log (command, warnings, timings, outcome).

        Returns:
            The run. With ``waitForCompletion`` it has succeeded (failures raise).

        Raises:
            GTVAutoSegError: invalid input, a run already in progress, or (waiting) a failed run.
            GTVAutoSegCancelled: (waiting) the run was cancelled.
        """
        self._checkIdle()
        parameters = parameters or SegmentationParameters()
        parameters.check()
        checkInputVolume(inputVolume)
        run = SegmentationRun(inputVolumeNode=inputVolume, message="running")

        def load(run: SegmentationRun, outputDir: Path) -> None:
            results.loadFullRun(self.scene, run, outputDir / CASE_NAME, outputSegmentation, parameters)

        return self._start(run, inputVolume, parameters, None, load, waitForCompletion, onProgress, onFinished, onLog)

    def resegmentSlices(self, segmentationNode, include: Iterable[int] = (), exclude: Iterable[int] = (),
                        parameters: SegmentationParameters | None = None, waitForCompletion: bool = True,
                        onProgress: RunCallback | None = None, onFinished: RunCallback | None = None,
                        onLog: LogCallback | None = None) -> SegmentationRun:
        """Apply a reviewer's slice corrections to a segmentation this logic filled.

        The segmenter alone (no classifier) runs on exactly the ``include`` slices, with the model
        that made the segmentation, and the target's voxels there are replaced by its result; the
        ``exclude`` slices are emptied without running anything. Every other slice of the segment,
        manual edits included, and every other segment stay as they are. The probability table
        records the corrections (``selected`` and ``user`` columns).

        Args:
            segmentationNode: filled by :meth:`process` (it records its CT, model and segment).
            include, exclude: K slice indices of the CT.
            parameters: ``device`` and ``reviewMargin`` are used; the model is the one recorded on the node.
            waitForCompletion, onProgress, onFinished, onLog: as for :meth:`process`.

        Raises:
            GTVAutoSegError: the node was not filled by this logic, its CT or segment is gone, a
                slice is out of range or in both lists, or (waiting) the run failed.
        """
        self._checkIdle()
        parameters = parameters or SegmentationParameters()
        parameters.check()
        target = results.ResultNodes.of(self.scene, segmentationNode)
        include, exclude = target.checkSlices(include, exclude)
        run = SegmentationRun(inputVolumeNode=target.volume, message="running", included=include, excluded=exclude)
        modelParameters = SegmentationParameters(model=target.modelSource, device=parameters.device,
                                                 reviewMargin=parameters.reviewMargin)

        def load(run: SegmentationRun, outputDir: Path | None) -> None:
            results.loadResegmentation(run, target, outputDir / CASE_NAME if outputDir else None, modelParameters)

        if include:
            return self._start(run, target.volume, modelParameters, include, load, waitForCompletion, onProgress,
                               onFinished, onLog)
        # Emptying slices needs no network: done at once, reported like a run.
        started = time.monotonic()
        try:
            load(run, None)
            run.status, run.percent = RunStatus.SUCCEEDED, 100.0
        except Exception as exc:
            self._fail(run, exc)
        run.seconds = time.monotonic() - started
        if onLog is not None:
            onLog(run.message)
        if onFinished is not None:
            onFinished(run)
        if run.status == RunStatus.FAILED and waitForCompletion:
            raise GTVAutoSegError(run.message)
        return run

    def _checkIdle(self) -> None:
        if self.isRunning():
            raise GTVAutoSegError("a segmentation is already running; cancel it or wait for it to finish")

    def _start(self, run: SegmentationRun, volume, parameters: SegmentationParameters, onlySlices, load,
               waitForCompletion: bool, onProgress, onFinished, onLog) -> SegmentationRun:
        workDir = Path(tempfile.mkdtemp(prefix="GTVAutoSeg-"))
        try:
            inputPath = writeVolume(volume, workDir / "input.nrrd")
            args = self.commandLine(inputPath, workDir / "output", parameters, onlySlices)
            process = self.processFactory(args, self.childEnvironment())
        except OSError as exc:  # the interpreter is missing or cannot be started
            shutil.rmtree(workDir, ignore_errors=True)
            raise GTVAutoSegError(f"could not start the inference process {args[0]}: {exc.strerror or exc}") from None
        except BaseException:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        run.pid = process.pid
        self._active = _Active(run, process, workDir, None, parameters, onProgress, onFinished,
                               time.monotonic(), load, onLog)
        self._active.log(" ".join(args))
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
                if stream == "stderr":
                    logger.warning("GTVAutoSeg: %s", line)
                    if active.onLog is not None:
                        active.onLog(line)
                else:
                    active.log(line)
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
            active.log("cancelled")
            self._cleanUp(active)

    def _finish(self, active: _Active, code: int) -> None:
        run = active.run
        try:
            if code == 0:
                active.load(run, active.workDir / "output")
                run.status, run.percent = RunStatus.SUCCEEDED, 100.0
                timings = results.formatTimings(run.report)
                if timings:
                    active.log(timings)
            elif code == 130:
                run.status = RunStatus.CANCELLED
                run.message = "cancelled"
            else:
                run.status = RunStatus.FAILED
                run.message = self._errorMessage(active.process.stderrTail(), code)
        except Exception as exc:  # even a bug must end the run and reach the user, not repeat on a timer
            self._fail(run, exc)
        finally:
            active.log(run.message)
            self._cleanUp(active)

    @staticmethod
    def _fail(run: SegmentationRun, exc: Exception) -> None:
        run.status = RunStatus.FAILED
        if isinstance(exc, GTVAutoSegError):
            run.message = str(exc)
        else:
            logger.exception("GTVAutoSeg: reading the result failed")
            run.message = f"reading the result failed ({type(exc).__name__}: {exc})"

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
        table = readProbabilityTable(tableNode)
        return reviewSlices(table.probabilities, table.centres, table.threshold, margin, table.selected, table.user)

    def knowsDicomSeries(self, segmentationNode) -> bool:
        """Whether :meth:`exportDicom` finds the CT's DICOM series by itself (else pass ``dicomFolder``)."""
        from .dicomexport import sourceSeriesFolder

        try:
            sourceSeriesFolder(results.ResultNodes.of(self.scene, segmentationNode).volume)
        except GTVAutoSegError:
            return False
        return True

    def exportDicom(self, segmentationNode, outputFolder, formats=("seg", "rtstruct"), dicomFolder=None,
                    name: str | None = None) -> list[Path]:
        """Export a segmentation this logic filled as DICOM SEG and/or RTSTRUCT (the module's one button).

        Both reference the CT's DICOM series: ``dicomFolder``, else the folder the CT volume was
        loaded from, else (in Slicer) its series in the DICOM database. The files appear together or
        not at all, as ``<name>_seg.dcm`` and ``<name>_rtstruct.dcm`` in ``outputFolder``.

        Args:
            formats: any of ``GTVAutoSegLib.outputs.DICOM_FORMATS``.
            name: file name stem; default the segmentation node's name.

        Returns:
            The files written.

        Raises:
            GTVAutoSegError: not a GTVAutoSeg result, no (referable) DICOM series, another grid,
                an unknown format, or a failed write (one line each).
        """
        from GTVAutoSegLib.errors import GTVError
        from GTVAutoSegLib.outputs import (DICOM_FORMATS, OUTPUT_FORMATS, atomic_outputs, check_case_name,
                                           prepare_output_dir)

        from .dicomexport import writeDicom

        target = results.ResultNodes.of(self.scene, segmentationNode)
        requested = [formats] if isinstance(formats, str) else list(formats)
        unknown = [f for f in requested if f not in DICOM_FORMATS]
        if unknown or not requested:
            raise GTVAutoSegError(f"DICOM export writes {' and/or '.join(DICOM_FORMATS)}, not {unknown or 'nothing'}")
        formats = [f for f in DICOM_FORMATS if f in requested]
        stem = name or "".join(c if c.isalnum() or c in "-_." else "_" for c in segmentationNode.GetName()).strip("._")
        try:
            folder = prepare_output_dir(outputFolder)
            paths = {fmt: folder / f"{check_case_name(stem or 'segmentation')}{OUTPUT_FORMATS[fmt]}" for fmt in formats}
            with atomic_outputs(paths.values()) as tmps:
                writeDicom(target, dict(zip(paths, tmps)), dicomFolder)
        except GTVError as exc:
            raise GTVAutoSegError(str(exc)) from None
        return list(paths.values())

    @staticmethod
    def deviceChoices() -> list[tuple[str, str]]:
        """``(name, label)`` of the devices to offer: what torch sees, or auto and CPU before torch is installed."""
        if importlib.util.find_spec("torch") is None:
            return [("auto", "Auto"), ("cpu", "CPU")]
        from GTVAutoSegLib.device import available_devices

        return available_devices()
