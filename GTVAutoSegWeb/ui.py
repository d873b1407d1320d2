"""The page: a side panel (CT, model, Segment GTV, result, editing, review list, log) beside the four
views. Element ids are what the browser tests (and a user's own scripts) find them by.
"""

from __future__ import annotations

from trame.widgets import client, html
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3

from .inputs import ZIP_SUFFIX

ACCEPTED_UPLOADS = ".nii,.nii.gz,.gz,.nrrd,.mha,.zip"
CSS = """
html { overflow-y: hidden; }
.gtv-section { font-size: 0.8rem; text-transform: uppercase; opacity: 0.7; margin: 10px 0 4px 0; }
.gtv-log { font-size: 0.72rem; max-height: 180px; overflow-y: auto; white-space: pre-wrap; margin: 0; }
.gtv-card { font-size: 0.75rem; max-height: 160px; overflow-y: auto; white-space: pre-wrap; margin: 0; }
.gtv-view-label { position: absolute; top: 4px; right: 8px; color: white; font-size: 0.8rem;
                  pointer-events: none; text-shadow: 0 0 3px black; }
.gtv-review { max-height: 200px; overflow-y: auto; }
"""


def build(server, actions, layoutManager) -> SinglePageWithDrawerLayout:
    """Lay out the page; ``actions`` holds the callbacks (see ``app.WebApp``)."""
    with SinglePageWithDrawerLayout(server, full_height=True) as layout:
        client.Style(CSS)
        layout.title.set_text("GTVAutoSeg")
        layout.drawer.width = 400
        with layout.toolbar:
            v3.VSpacer()
            html.Span("Research use only: every contour must be reviewed by a clinician.",
                      classes="text-caption mr-4")
            v3.VSelect(label="CT window", v_model=("preset",), items=("presets",), id="preset-select",
                       density="compact", hide_details=True, style="max-width: 180px", classes="mr-2")
        with layout.drawer:
            with html.Div(classes="pa-3"):
                _status(actions)
                _ctPanel(actions)
                _modelPanel(actions)
                _runPanel(actions)
                _resultPanel(actions)
                _reviewPanel(actions)
                _logPanel()
        with layout.content:
            with html.Div(style="height: calc(100vh - 64px); position: relative;"):
                layoutManager.initialize_layout_grid(layout)
    return layout


def _status(actions) -> None:
    v3.VAlert(v_if="error", text=("error",), type="error", density="compact", id="error-alert", classes="mb-2",
              closable=True, click_close=actions.clearError)
    html.Div("{{ status }}", id="status", classes="text-body-2 mb-2")


def _ctPanel(actions) -> None:
    html.Div("CT", classes="gtv-section")
    html.Div(f"Upload NIfTI, NRRD, MHA, or a DICOM series as {ZIP_SUFFIX} (at most {{{{ max_upload_mb }}}} MiB):",
             classes="text-caption")
    html.Input(type="file", id="gtv-upload", accept=ACCEPTED_UPLOADS, disabled=("running || loading",),
               classes="text-body-2 my-1")
    v3.VAutocomplete(v_if="data_items.length", label="or open one from the server's data folder",
                     items=("data_items",), v_model=("data_choice", None), id="data-select", density="compact",
                     hide_details=True, clearable=True, disabled=("running || loading",),
                     update_modelValue=(actions.openDataEntry, "[$event]"), classes="my-1")
    html.Div("{{ ct_info }}", id="ct-info", classes="text-caption")


def _modelPanel(actions) -> None:
    html.Div("Model", classes="gtv-section")
    v3.VSelect(label="Model", v_model=("model",), items=("models",), id="model-select", density="compact",
               hide_details=True, disabled=("running",))
    with v3.VExpansionPanels(classes="my-1"):
        with v3.VExpansionPanel(title="Model card"):
            with v3.VExpansionPanelText():
                html.Pre("{{ model_card }}", classes="gtv-card", id="model-card")
    with html.Div(classes="d-flex"):
        v3.VSelect(label="Device", v_model=("device",), items=("devices",), id="device-select", density="compact",
                   hide_details=True, classes="mr-2", disabled=("running",))
        v3.VTextField(label="Threshold (blank: the model's)", v_model=("threshold", ""), id="threshold",
                      density="compact", hide_details=True, disabled=("running",))


def _runPanel(actions) -> None:
    with html.Div(classes="my-3"):
        v3.VBtn("{{ running ? 'Cancel' : 'Segment GTV' }}", id="segment-button", block=True,
                color=("running ? 'error' : 'primary'",), disabled=("!ct_loaded || loading",),
                click=actions.segmentOrCancel)
        v3.VProgressLinear(v_show="running", model_value=("progress", 0), id="progress", height=8, classes="mt-2",
                           color="primary")
        html.Div("{{ stage }}", v_show="running", id="stage", classes="text-caption")


def _resultPanel(actions) -> None:
    with html.Div(v_if="has_result"):
        html.Div("Result", classes="gtv-section")
        html.Div("{{ segment_info }}", id="segment-info", classes="text-body-2")
        html.Div("axial slice K = {{ axial_k }}", id="axial-k", classes="text-caption")
        html.Div("Correct it (Segment Editor)", classes="gtv-section")
        with v3.VBtnToggle(v_model=("effect", "none"), mandatory=True, density="compact", divided=True,
                           update_modelValue=(actions.setEffect, "[$event]"), disabled=("running",)):
            for name, icon in (("none", "mdi-cursor-default"), ("paint", "mdi-brush"), ("erase", "mdi-eraser"),
                               ("scissors", "mdi-content-cut")):
                v3.VBtn(name, value=name, id=f"effect-{name}", prepend_icon=icon, size="small")
        v3.VSlider(label="Brush %", v_model=("brush", 6), min=1, max=30, step=1, id="brush-slider",
                   density="compact", hide_details=True, thumb_label=True,
                   update_modelValue=(actions.setBrush, "[$event]"), classes="mt-2")
        with html.Div(classes="d-flex my-1"):
            v3.VBtn("Undo", id="undo-button", disabled=("!can_undo || running",), click=actions.undo, size="small",
                    prepend_icon="mdi-undo", classes="mr-1")
            v3.VBtn("Redo", id="redo-button", disabled=("!can_redo || running",), click=actions.redo, size="small",
                    prepend_icon="mdi-redo", classes="mr-1")
            v3.VBtn("Keep largest island", id="islands-button", disabled=("running",), click=actions.keepLargestIsland,
                    size="small")
        with html.Div(classes="d-flex align-center my-2"):
            v3.VBtn("Save", id="save-button", disabled=("running",), click=actions.save, size="small",
                    prepend_icon="mdi-content-save", color="secondary", classes="mr-2")
            html.A("{{ f.name }}", v_for="f in saved_files", key="f.name", href=("f.url",), download=("f.name",),
                   classes="download-link mr-2 text-caption")


def _reviewPanel(actions) -> None:
    with html.Div(v_if="has_result"):
        html.Div("Review: slices near the threshold", classes="gtv-section")
        with html.Div(classes="gtv-review", id="review-list"):
            html.Div("No slice within the margin.", v_if="!review_items.length", classes="text-caption")
            with html.Div(v_for="item in review_items", key="item.k", classes="d-flex align-center review-item"):
                v3.VCheckboxBtn(model_value=("item.ticked",), density="compact", disabled=("running",),
                                update_modelValue=(actions.tick, "[item.k, $event]"),
                                id=("`review-tick-${item.k}`",))
                v3.VBtn("{{ item.label }}", variant="text", size="small", classes="text-none",
                        click=(actions.jumpTo, "[item.k]"), id=("`review-jump-${item.k}`",))
        v3.VBtn("Re-segment selected slices", id="resegment-button", size="small", block=True, classes="mt-1",
                disabled=("running",), click=actions.resegment)


def _logPanel() -> None:
    html.Div("Log", classes="gtv-section")
    html.Pre("{{ log_lines.join('\\n') }}", id="log", classes="gtv-log")


def viewOverlay(viewId: str, orientation: str) -> None:
    """A label in each view; the tests find a view by it."""
    html.Div(orientation, id=f"view-{orientation.lower()}", classes="gtv-view-label")
