"""Reading the CLI's outputs into the scene: a full run, or a re-segmentation of chosen slices.

Everything is read and checked before any node the user sees is created or changed, so a bad
output leaves the scene as it was. No Qt.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GTVAutoSegError
from .nodes import (
    ATTRIBUTE_PREFIX,
    PROBABILITY_TABLE_REFERENCE_ROLE,
    SEGMENT_ID_ATTRIBUTE,
    fillProbabilityTable,
    fillSegmentation,
    labelmapArray,
    placeBesideVolume,
    probabilityTableFor,
    readProbabilityTable,
    readSegmentationFile,
    recordSliceDecisions,
    replaceSegmentSlices,
    segmentArray,
    sliceCentresRas,
)
from .review import reviewSlices

# What the logic records on the segmentation node it fills (read back to re-segment slices).
MODEL_ATTRIBUTE = ATTRIBUTE_PREFIX + "model"              # name@version of the model that ran
MODEL_SOURCE_ATTRIBUTE = ATTRIBUTE_PREFIX + "modelSource"  # what --model was given ("" = the default model)
VOLUME_ATTRIBUTE = ATTRIBUTE_PREFIX + "inputVolumeID"
TARGET_ATTRIBUTE = ATTRIBUTE_PREFIX + "target"
VOLUME_CC_ATTRIBUTE = ATTRIBUTE_PREFIX + "volumeCc"
ANATOMIC_REGION_ATTRIBUTE = ATTRIBUTE_PREFIX + "anatomicRegion"  # of the model's target ("" for none)
TIMING_STAGES = ("read", "preprocess", "classifier", "segmenter", "inverse", "write")


def formatTimings(report: dict) -> str:
    """``"timings: read 0.41 s, preprocess 0.75 s, ..., total 3.15 s (device cpu)"``; "" without timings."""
    timings = report.get("timings_s") or {}
    parts = [f"{stage} {float(timings[stage]):.2f} s" for stage in TIMING_STAGES if stage in timings]
    if not parts:
        return ""
    total = f", total {float(timings['total']):.2f} s" if "total" in timings else ""
    device = f" (device {report['device']})" if report.get("device") else ""
    return f"timings: {', '.join(parts)}{total}{device}"


def _readOutputs(stem: Path, volume) -> tuple[dict, object]:
    """The report and the segmentation the CLI wrote as ``<stem>_report.json`` / ``<stem>.seg.nrrd``."""
    try:
        report = json.loads(stem.with_name(f"{stem.name}_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GTVAutoSegError(f"the inference wrote no readable report ({exc})") from None
    segmentation = readSegmentationFile(stem.with_name(f"{stem.name}.seg.nrrd"))
    nk = volume.GetImageData().GetDimensions()[2]
    if len(report.get("slice_probabilities", [])) != nk:
        raise GTVAutoSegError(f"the inference reported {len(report.get('slice_probabilities', []))} slice "
                              f"probabilities for {nk} slices (is the CT acquired axially?)")
    return report, segmentation


def _modelName(report: dict) -> str:
    model = report.get("model", {})
    return f"{model.get('name', '')}@{model.get('version', '')}"


def loadFullRun(scene, run, stem: Path, outputNode, parameters) -> None:
    """A full run's outputs into ``outputNode`` (or a new node beside the CT in the subject hierarchy)."""
    volume = run.inputVolumeNode
    if volume.GetScene() is not scene:
        raise GTVAutoSegError("the input volume was removed from the scene during the segmentation")
    report, segmentation = _readOutputs(stem, volume)
    # null: the classifier did not run (segmenter alone)
    probabilities = [math.nan if p is None else float(p) for p in report["slice_probabilities"]]
    threshold = float(report.get("threshold", 0.5))
    selected = report.get("slice_selected")  # absent from reports of older versions: p >= threshold
    target = str(report.get("model", {}).get("target") or "GTV")
    name = parameters.segmentName or target

    created = outputNode is None or outputNode.GetScene() is not scene
    if created:
        outputNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume.GetName()} {name}")
    from .terminology import segmentTerminology

    region = report.get("model", {}).get("anatomic_region") or None
    fillSegmentation(outputNode, segmentation, volume, name,
                     defaultTerminology=segmentTerminology(target, region), createSurface=parameters.createSurface)
    for key, value in ((MODEL_ATTRIBUTE, _modelName(report)), (MODEL_SOURCE_ATTRIBUTE, parameters.model or ""),
                       (TARGET_ATTRIBUTE, target), (ATTRIBUTE_PREFIX + "threshold", repr(threshold)),
                       (VOLUME_ATTRIBUTE, volume.GetID()), (ANATOMIC_REGION_ATTRIBUTE, region or ""),
                       (VOLUME_CC_ATTRIBUTE, repr(float(report.get("volume_cc", 0.0))))):
        outputNode.SetAttribute(key, value)

    tableNode = probabilityTableFor(outputNode)
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{outputNode.GetName()} slice probabilities")
        outputNode.SetNodeReferenceID(PROBABILITY_TABLE_REFERENCE_ROLE, tableNode.GetID())
    fillProbabilityTable(tableNode, probabilities, threshold, volume, selected=selected)
    if created:
        placeBesideVolume(outputNode, volume)
    placeBesideVolume(tableNode, volume)

    run.segmentationNode, run.tableNode, run.report = outputNode, tableNode, report
    run.reviewSlices = reviewSlices(probabilities, sliceCentresRas(volume), threshold, parameters.reviewMargin, selected)
    run.message = (f"{name} {report.get('volume_cc', 0.0):.1f} cc on {report.get('slices_segmented', 0)}/"
                   f"{report.get('slices_total', 0)} slices in {run.seconds:.1f} s; "
                   f"{len(run.reviewSlices)} slice(s) to review")


@dataclass
class ResultNodes:
    """What a segmentation filled by :func:`loadFullRun` records: its CT, segment, table and model."""

    segmentationNode: object
    volume: object
    segmentId: str
    tableNode: object
    modelSource: str | None
    model: str

    @classmethod
    def of(cls, scene, segmentationNode) -> "ResultNodes":
        if segmentationNode is None or segmentationNode.GetScene() is not scene:
            raise GTVAutoSegError("select the segmentation to correct")
        name = segmentationNode.GetName()
        tableNode = probabilityTableFor(segmentationNode)
        segmentId = segmentationNode.GetAttribute(SEGMENT_ID_ATTRIBUTE)
        if tableNode is None or not segmentId or segmentationNode.GetAttribute(MODEL_ATTRIBUTE) is None:
            raise GTVAutoSegError(f"'{name}' was not made by GTVAutoSeg; segment the CT first")
        if segmentationNode.GetSegmentation().GetSegment(segmentId) is None:
            raise GTVAutoSegError(f"the target segment of '{name}' was deleted; segment the CT again")
        volume = scene.GetNodeByID(segmentationNode.GetAttribute(VOLUME_ATTRIBUTE) or "")
        if volume is None or volume.GetImageData() is None:
            raise GTVAutoSegError(f"the CT that '{name}' was made from is no longer in the scene")
        return cls(segmentationNode, volume, segmentId, tableNode,
                   segmentationNode.GetAttribute(MODEL_SOURCE_ATTRIBUTE) or None,
                   segmentationNode.GetAttribute(MODEL_ATTRIBUTE))

    def checkSlices(self, include, exclude) -> tuple[list[int], list[int]]:
        """Sorted, de-duplicated slice lists; ``GTVAutoSegError`` for overlaps and indices outside the CT."""
        include, exclude = sorted({int(k) for k in include}), sorted({int(k) for k in exclude})
        both = sorted(set(include) & set(exclude))
        if both:
            raise GTVAutoSegError(f"slice(s) {', '.join(map(str, both))} cannot be both added and removed")
        nk = self.volume.GetImageData().GetDimensions()[2]
        outside = [k for k in include + exclude if not 0 <= k < nk]
        if outside:
            raise GTVAutoSegError(f"slice(s) {', '.join(map(str, outside))} do not exist: the CT has {nk} "
                                  f"slices (0-{nk - 1})")
        if not include and not exclude:
            raise GTVAutoSegError("no slice was ticked or unticked")
        return include, exclude


def loadResegmentation(run, target: ResultNodes, stem: Path | None, parameters) -> None:
    """Put the segmenter's result on ``run.included`` and empty ``run.excluded``; nothing else changes."""
    volume = target.volume
    shape = volume.GetImageData().GetDimensions()[::-1]
    voxels = np.zeros(shape, np.uint8)
    if stem is not None:
        report, segmentation = _readOutputs(stem, volume)
        if _modelName(report) != target.model:
            raise GTVAutoSegError(f"model {_modelName(report)} ran, but '{target.segmentationNode.GetName()}' was "
                                  f"made by {target.model}; segment the CT again with one model")
        segment = segmentation.GetSegment(segmentation.GetNthSegmentID(0))
        voxels = labelmapArray(segment.GetRepresentation("Binary labelmap"), segment.GetLabelValue(), volume)
        run.report = report
    node = target.segmentationNode
    replaceSegmentSlices(node, target.segmentId, volume, voxels, run.included + run.excluded)
    recordSliceDecisions(target.tableNode, run.included, run.excluded)
    spacing = volume.GetSpacing()
    volumeCc = float(segmentArray(node, target.segmentId, volume).sum()) * float(np.prod(spacing)) / 1000.0
    node.SetAttribute(VOLUME_CC_ATTRIBUTE, repr(volumeCc))
    table = readProbabilityTable(target.tableNode)
    run.segmentationNode, run.tableNode = node, target.tableNode
    run.reviewSlices = reviewSlices(table.probabilities, table.centres, table.threshold, parameters.reviewMargin,
                                    table.selected, table.user)
    name = node.GetSegmentation().GetSegment(target.segmentId).GetName()
    done = []
    if run.included:
        done.append(f"segmented slice(s) {', '.join(map(str, run.included))}")
    if run.excluded:
        done.append(f"emptied slice(s) {', '.join(map(str, run.excluded))}")
    run.message = f"{' and '.join(done).capitalize()}; {name} now {volumeCc:.1f} cc"
