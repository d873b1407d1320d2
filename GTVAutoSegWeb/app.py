"""The web app: trame state and callbacks over a :class:`~GTVAutoSegWeb.session.Session`.

Uploads and downloads go over plain HTTP routes beside trame's websocket (streamed to disk with a
size limit; downloads only of files this app saved). Every callback turns a ``GTVError`` into the
one-line error box and anything unexpected into a one-line "internal error" plus a traceback in
the server log: nothing a user sends ends the server.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import shutil
import tempfile
from pathlib import Path

from aiohttp import web
from GTVAutoSegSlicerLib import RunStatus, SegmentationLogic, SegmentationParameters
from GTVAutoSegSlicerLib.models import listModels, modelsJsonPath
from trame.app import TrameApp
from trame_slicer.app.ui import create_vertical_slice_view_gutter_ui, create_vertical_view_gutter_ui
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

from GTVAutoSegLib.errors import GTVError

from . import ui
from .inputs import MIB, DataFolder, read_ct_file, safe_file_name, save_stream, upload_case_name
from .session import DEFAULT_PRESET, WINDOW_PRESETS, Session

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2
LOG_LINES = 400  # the log panel keeps the last lines
REVIEW_MARGIN = 0.1
SUMMARY_DELAY_S = 0.25  # a paint stroke modifies the segment many times; count once it settles
UPLOAD_ROUTE = "/gtvautoseg/upload"
DOWNLOAD_ROUTE = "/gtvautoseg/download/{name}"
LAYOUT = "GTVAutoSeg"


def _reporting(method):
    """A page callback: user errors to the error box, bugs to one line plus the server log."""

    @functools.wraps(method)
    async def wrapper(self, *args):
        try:
            result = method(self, *args)
            if asyncio.iscoroutine(result):
                await result
        except GTVError as exc:
            self.showError(str(exc))
        except Exception as exc:
            logger.exception("GTVAutoSeg web: %s failed", method.__name__)
            self.showError(f"internal error ({type(exc).__name__}: {exc}); see the server log")

    return wrapper


class WebApp(TrameApp):
    """Args:
        server: a trame server (None: the default one).
        dataFolder: ``--data DIR`` (None: uploads only).
        outputFolder: where Save writes (files are then downloadable from the page).
        maxUploadMb: the upload limit.
    """

    def __init__(self, server=None, dataFolder: Path | None = None, outputFolder: Path | None = None,
                 maxUploadMb: float = 1024.0):
        super().__init__(server)
        self.data = DataFolder(dataFolder)
        self.outputFolder = Path(outputFolder or Path.cwd() / "gtvautoseg-web").resolve()
        self.uploadLimit = int(maxUploadMb * MIB)
        self.uploads = Path(tempfile.mkdtemp(prefix="GTVAutoSeg-uploads-"))
        self._uploadIds = itertools.count(1)
        self._ctWork: Path | None = None  # the shown CT's unpacked DICOM series, kept for saving SEG/RTSTRUCT
        self.downloads: dict[str, Path] = {}
        self._summaryPending = False
        self._pollTask: asyncio.Task | None = None

        self.slicerApp = SlicerApp()
        register_rca_factories(self.slicerApp.view_manager, self.server, slice_view_ui_f=self._sliceViewUi,
                               three_d_view_ui_f=self._threeDViewUi)
        self.session = Session(self.slicerApp)
        self.layoutManager = LayoutManager(self.slicerApp.scene, self.slicerApp.view_manager, self.server)
        axial, coronal, sagittal = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(),
                                    ViewLayoutDefinition.sagittal_view())
        self.layoutManager.register_layout(LAYOUT, Layout(LayoutDirection.Horizontal, [
            Layout(LayoutDirection.Vertical, [axial, coronal]),
            Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.threed_view(), sagittal]),
        ]))
        self.layoutManager.set_layout(LAYOUT)
        self.session.editor.segmentation_modified.connect(self._segmentationModified)
        for signal in self.session.undoStack.signals():
            signal.connect(self._undoChanged)

        self._initialState()
        self.ui = ui.build(self.server, self, self.layoutManager)
        self.state.change("preset")(self._presetChanged)
        self.server.controller.on_server_bind.add(self._bindRoutes)
        self.server.controller.on_server_exited.add(self._cleanUp)
        self.server.controller.on_server_ready.add(lambda **_: asyncio.ensure_future(self._queryDevices()))

    # ------------------------------------------------------------------------------ state

    def _initialState(self) -> None:
        models = listModels()
        default = next((m for m in models if m.default), models[0] if models else None)
        s = self.state
        s.trame__title = "GTVAutoSeg"
        s.status = "Load a CT to start."
        s.error = ""
        s.loading = False
        s.running = False
        s.progress = 0.0
        s.stage = ""
        s.log_lines = []
        s.ct_loaded = False
        s.ct_info = ""
        s.max_upload_mb = round(self.uploadLimit / MIB)
        s.data_items = self.data.items()
        s.presets = list(WINDOW_PRESETS)
        s.preset = DEFAULT_PRESET
        s.models = [{"title": m.display_name(), "value": m.key} for m in models]  # name@version: one item each
        s.model = default.key if default else None
        s.model_card = default.card_text(modelsJsonPath().parent) if default else "No model installed."
        # Until the device query below answers (it imports torch, which takes long): what needs no torch.
        s.devices = [{"title": "Auto (CUDA GPU if any, else CPU)", "value": "auto"}, {"title": "CPU", "value": "cpu"}]
        s.device = "auto"
        s.threshold = ""
        self._resetResultState()
        self.state.change("model")(self._modelChanged)

    def _resetResultState(self) -> None:
        s = self.state
        s.has_result = False
        s.segment_info = ""
        s.axial_k = None
        s.review_items = []
        s.effect = "none"
        s.can_undo = False
        s.can_redo = False
        s.saved_files = []

    def showError(self, message: str) -> None:
        with self.state:
            self.state.error = message.splitlines()[0] if message else "error"
            self._log(f"error: {self.state.error}")

    def _status(self, text: str) -> None:
        with self.state:
            self.state.status = text

    def _log(self, line: str) -> None:
        self.state.log_lines = [*self.state.log_lines, line][-LOG_LINES:]

    def clearError(self, *_) -> None:
        self.state.error = ""

    def _modelChanged(self, model=None, **_) -> None:
        entry = next((m for m in listModels() if m.key == model), None)
        self.state.model_card = entry.card_text(modelsJsonPath().parent) if entry else ""

    async def _queryDevices(self) -> None:
        """The devices torch sees, asked of a child process: importing torch into the server would cost
        it memory and (on a slow disk) minutes before the first page."""
        code = "import json; from GTVAutoSegLib.device import available_devices; print(json.dumps(available_devices()))"
        try:
            child = await asyncio.create_subprocess_exec(
                self.session.logic.python, "-c", code, env=SegmentationLogic.childEnvironment(),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await child.communicate()
            devices = json.loads(out.decode() or "[]")
        except (OSError, ValueError) as exc:
            logger.warning("GTVAutoSeg web: could not list the devices (%s)", exc)
            return
        if devices:
            with self.state:
                self.state.devices = [{"title": label, "value": name} for name, label in devices]

    def _presetChanged(self, preset=None, **_) -> None:
        try:
            self.session.setWindowPreset(preset)
        except GTVError as exc:
            self.showError(str(exc))

    # ------------------------------------------------------------------------------ views

    def _sliceViewUi(self, server, viewId, view) -> None:
        create_vertical_slice_view_gutter_ui(server, viewId, view)
        ui.viewOverlay(viewId, view.get_orientation())
        if view.get_orientation() == "Axial":
            view.modified.connect(self._axialMoved)

    def _threeDViewUi(self, server, viewId, view) -> None:
        create_vertical_view_gutter_ui(server, viewId, view)
        ui.viewOverlay(viewId, "3D")

    def _axialMoved(self, *_) -> None:
        k = self.session.axialSlice()
        if k != self.state.axial_k:
            with self.state:
                self.state.axial_k = k

    # ------------------------------------------------------------------------------ loading a CT

    def _bindRoutes(self, wslinkServer) -> None:
        wslinkServer.app.router.add_post(UPLOAD_ROUTE, self._uploadRoute)
        wslinkServer.app.router.add_get(DOWNLOAD_ROUTE, self._downloadRoute)

    async def _uploadRoute(self, request: web.Request) -> web.Response:
        name = safe_file_name(request.query.get("name", ""))
        work = self.uploads / str(next(self._uploadIds))
        try:
            self._checkCanLoad()
            work.mkdir()
            self._status(f"receiving {name}...")
            await save_stream(request.content.iter_chunked(MIB), work / name, self.uploadLimit, request.content_length)
            await self._load(work / name, upload_case_name(name), work)
            return web.json_response({"ok": True})
        except GTVError as exc:
            self.showError(str(exc))
            self._status("")
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:
            logger.exception("GTVAutoSeg web: upload failed")
            self.showError(f"internal error ({type(exc).__name__}: {exc}); see the server log")
            return web.json_response({"error": "internal error"}, status=500)
        finally:
            self._dropWork(work)

    @_reporting
    async def openDataEntry(self, key) -> None:
        if not key:
            return
        self._checkCanLoad()
        path, name = self.data.path(key)
        work = self.uploads / str(next(self._uploadIds))
        work.mkdir()
        try:
            await self._load(path, name, work)
        finally:
            self._dropWork(work)

    def _dropWork(self, work: Path) -> None:
        """Remove a load's work folder, unless it holds the shown CT's DICOM series (SEG and RTSTRUCT
        copy patient and study from its files when saved); that one goes when another CT is loaded."""
        if work != self._ctWork:
            shutil.rmtree(work, ignore_errors=True)

    def _checkCanLoad(self) -> None:
        if self.state.loading:
            raise GTVError("a CT is being loaded; wait for it")
        if self.session.isRunning():
            raise GTVError("a segmentation is running; cancel it or wait for it to finish")

    async def _load(self, path: Path, name: str, work: Path) -> None:
        with self.state:
            self.state.loading = True
            self.state.error = ""
            self.state.status = f"reading {name}..."
        try:
            loaded = await asyncio.to_thread(read_ct_file, path, name, work, self.uploadLimit)
            with self.state:
                self.session.showCt(loaded)
                previous, self._ctWork = self._ctWork, None
                source = loaded.image.source
                if source is not None and Path(source.folder).resolve().is_relative_to(work.resolve()):
                    self._ctWork = work
                if previous is not None and previous != work:
                    shutil.rmtree(previous, ignore_errors=True)
                image = loaded.image
                nx, ny, nz = image.array.shape[::-1]
                spacing = " x ".join(f"{v:.2f}" for v in image.spacing)
                self.state.ct_info = f"{name}: {nx} x {ny} x {nz} voxels, {spacing} mm"
                self.state.ct_loaded = True
                self._resetResultState()
                self.state.axial_k = self.session.axialSlice()
                for warning in loaded.warnings:
                    self._log(f"warning: {warning}")
                self._log(f"loaded {self.state.ct_info}")
                self.state.status = f"{name} loaded; click Segment GTV."
        finally:
            with self.state:
                self.state.loading = False

    # ------------------------------------------------------------------------------ running

    def _parameters(self) -> SegmentationParameters:
        text = str(self.state.threshold or "").strip()
        threshold = None
        if text:
            try:
                threshold = float(text)
            except ValueError:
                raise GTVError(f"threshold {text!r} is not a number") from None
            if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
                raise GTVError(f"threshold {text} is not a probability in [0, 1]")
        return SegmentationParameters(model=self.state.model or None, device=self.state.device or "auto",
                                      threshold=threshold, reviewMargin=REVIEW_MARGIN)

    @_reporting
    def segmentOrCancel(self) -> None:
        if self.session.isRunning():
            self.session.cancel()
            return
        self._begin(self.session.start, "segmenting")

    @_reporting
    def resegment(self) -> None:
        self._begin(self.session.resegment, "re-segmenting the selected slices")

    def _begin(self, start, what: str) -> None:
        parameters = self._parameters()
        with self.state:
            self.state.error = ""
            self.state.progress = 0.0
            self.state.stage = "starting"
            self.state.status = f"{what}..."
            run = start(parameters, self._onProgress, self._onFinished, self._onLog)
            self.state.effect = "none"
            self.state.running = not run.finished
        if not run.finished:
            self._pollTask = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        try:
            while True:
                with self.state:
                    going = self.session.poll()
                if not going:
                    return
                await asyncio.sleep(POLL_SECONDS)
        except Exception as exc:
            logger.exception("GTVAutoSeg web: polling the run failed")
            self.session.cancel()
            self.showError(f"internal error ({type(exc).__name__}: {exc}); see the server log")

    def _onProgress(self, run) -> None:
        self.state.progress = run.percent
        self.state.stage = run.message

    def _onLog(self, line: str) -> None:
        self._log(line)

    def _onFinished(self, run) -> None:
        self.state.running = False
        self.state.progress = run.percent
        if run.status == RunStatus.SUCCEEDED:
            fullRun = not run.included and not run.excluded
            self.session.adopt(run, REVIEW_MARGIN)
            if fullRun:  # show the result where it is largest (the review list jumps to doubtful slices)
                k = self.session.largestSlice()
                if k is None and self.session.review:
                    k = self.session.review[0].sliceIndex
                if k is not None:
                    self.session.jumpToSlice(k)
            self.state.has_result = True
            self._updateResultState()
            self.state.status = run.message
        elif run.status == RunStatus.CANCELLED:
            self.state.status = "cancelled; nothing was changed"
        else:
            self.state.error = run.message
            self.state.status = "the segmentation failed"

    def _updateResultState(self) -> None:
        summary = self.session.summary()
        self.state.segment_info = summary.text() if summary else ""
        self.state.review_items = [{"k": item.sliceIndex, "label": item.label(), "ticked": item.selected}
                                   for item in self.session.review]
        self.state.axial_k = self.session.axialSlice()
        self._undoChanged()

    # ------------------------------------------------------------------------------ review and editing

    @_reporting
    def tick(self, k, ticked) -> None:
        self.session.ticks[int(k)] = bool(ticked)
        self.state.review_items = [{**item, "ticked": self.session.ticks.get(item["k"], item["ticked"])}
                                   for item in self.state.review_items]

    @_reporting
    def jumpTo(self, k) -> None:
        self.session.jumpToSlice(int(k))
        self.state.axial_k = self.session.axialSlice()

    @_reporting
    def setEffect(self, name) -> None:
        self.session.setEffect(str(name or "none"), float(self.state.brush or 6))

    @_reporting
    def setBrush(self, value) -> None:
        if self.state.effect in ("paint", "erase"):
            self.session.setEffect(self.state.effect, float(value))

    @_reporting
    def undo(self) -> None:
        self.session.undo()
        self._updateSummaryNow()

    @_reporting
    def redo(self) -> None:
        self.session.redo()
        self._updateSummaryNow()

    @_reporting
    def keepLargestIsland(self) -> None:
        self.session.keepLargestIsland()
        self.state.effect = "none"
        self._updateSummaryNow()

    def _segmentationModified(self, *_) -> None:
        if self._summaryPending or not self.state.has_result:
            return
        self._summaryPending = True
        asyncio.get_event_loop().call_later(SUMMARY_DELAY_S, self._updateSummaryNow)

    def _updateSummaryNow(self) -> None:
        self._summaryPending = False
        try:
            summary = self.session.summary()
        except GTVError:
            summary = None
        with self.state:
            self.state.segment_info = summary.text() if summary else ""

    def _undoChanged(self, *_) -> None:
        with self.state:
            self.state.can_undo = self.session.undoStack.can_undo()
            self.state.can_redo = self.session.undoStack.can_redo()

    # ------------------------------------------------------------------------------ saving

    @_reporting
    def save(self) -> None:
        paths, why = self.session.save(self.outputFolder)
        for path in paths:
            self.downloads[path.name] = path
        with self.state:
            self.state.saved_files = [{"name": p.name, "url": DOWNLOAD_ROUTE.format(name=p.name).lstrip("/")}
                                      for p in paths]
            self._log(f"saved {', '.join(str(p) for p in paths)}")
            self.state.status = f"saved into {self.outputFolder}"
            if why:
                self._log(why)
                self.state.status += f" ({why})"

    async def _downloadRoute(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        path = self.downloads.get(name)
        if path is None or not path.is_file():
            raise web.HTTPNotFound(text=f"{name} was not saved by this app")
        return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # ------------------------------------------------------------------------------ shutting down

    def _cleanUp(self, *_, **__) -> None:
        self.session.close()
        shutil.rmtree(self.uploads, ignore_errors=True)
