"""MRML in and out: volume node -> NRRD file for the CLI, ``.seg.nrrd`` -> segmentation node, and
the per-slice probability table. Real MRML only (slicer-core or Slicer itself); no Qt, no torch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy

import slicer

from .errors import GTVAutoSegError
from .review import USER_EXCLUDED, USER_INCLUDED, USER_NONE

# Node reference from the segmentation to its per-slice probability table.
PROBABILITY_TABLE_REFERENCE_ROLE = "GTVAutoSegSliceProbabilities"
# Attributes the logic leaves on the nodes it fills (read by the widget and the batch summary).
ATTRIBUTE_PREFIX = "GTVAutoSeg."
THRESHOLD_ATTRIBUTE = ATTRIBUTE_PREFIX + "threshold"
SEGMENT_ID_ATTRIBUTE = ATTRIBUTE_PREFIX + "segmentID"
# A volume read from a DICOM folder remembers it, so its result can be exported as DICOM SEG/RTSTRUCT.
DICOM_FOLDER_ATTRIBUTE = ATTRIBUTE_PREFIX + "dicomFolder"
DICOM_SERIES_ATTRIBUTE = ATTRIBUTE_PREFIX + "dicomSeriesUID"
# "user": the reviewer's correction of the classifier's decision on a slice (review.USER_*).
COLUMNS = ("slice", "probability", "selected", "user", "R", "A", "S")


_converterLogic = None


def ensureSegmentationConverters() -> None:
    """Make sure the segmentation representations and converter rules are registered.

    Slicer's Segmentations module registers them at startup. With slicer-core alone nothing does,
    and copying or converting a segmentation then fails; a private Segmentations logic on a
    private scene registers them without touching the user's scene.
    """
    global _converterLogic
    if slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules():
        return
    _converterLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    _converterLogic.SetMRMLScene(slicer.vtkMRMLScene())


def checkInputVolume(volumeNode) -> None:
    """Raise ``GTVAutoSegError`` unless ``volumeNode`` is a scalar volume with voxels in it."""
    if volumeNode is None:
        raise GTVAutoSegError("select an input CT volume")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise GTVAutoSegError(f"'{volumeNode.GetName()}' is not a scalar (CT) volume")
    image = volumeNode.GetImageData()
    if image is None or min(image.GetDimensions()) < 1 or image.GetNumberOfPoints() == 0:
        raise GTVAutoSegError(f"volume '{volumeNode.GetName()}' holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise GTVAutoSegError(f"volume '{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} "
                              "components per voxel; a CT has one")


def writeVolume(volumeNode, path: str | Path) -> Path:
    """Write the volume's voxels and geometry to an uncompressed NRRD with Slicer's own writer.

    The writer turns the node's IJK-to-RAS matrix into NRRD's LPS ``space directions`` and
    ``space origin``, which is what SimpleITK (and so the CLI) reads. The node's parent transform is
    not applied: the result is placed under the same transform instead.
    """
    path = Path(path)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)  # a temporary file read once; gzip would only cost time
    if not storage.WriteData(volumeNode) or not path.is_file():
        raise GTVAutoSegError(f"could not write volume '{volumeNode.GetName()}' to {path}")
    return path


def loadVolume(scene, path: str | Path, name: str | None = None):
    """Load a CT file (NRRD, NIfTI, MHA...) or a DICOM series folder into a new scalar volume node.

    Files are read by Slicer's volume reader, as File > Add Data does. A DICOM folder is read by
    GTVAutoSegLib (slicer-core has no DICOM database) and handed over through a temporary NRRD.

    Raises:
        GTVAutoSegError: missing or unreadable input (the node is removed again).
    """
    path = Path(path)
    if not path.exists():
        raise GTVAutoSegError(f"input not found: {path}")
    if path.is_dir():
        return _loadDicomFolder(scene, path, name)
    volumeNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or _stem(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    volumeNode.SetAndObserveStorageNodeID(storage.GetID())
    ok = storage.ReadData(volumeNode)
    if not ok or volumeNode.GetImageData() is None:
        scene.RemoveNode(storage)
        scene.RemoveNode(volumeNode)
        raise GTVAutoSegError(f"{path.name} is not a readable volume (truncated or corrupt file?)")
    return volumeNode


def _loadDicomFolder(scene, folder: Path, name: str | None):
    import SimpleITK as sitk

    from GTVAutoSegLib.errors import GTVError
    from GTVAutoSegLib.io import read_image

    try:
        image = read_image(folder)
    except GTVError as exc:
        raise GTVAutoSegError(str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="GTVAutoSeg-dicom-") as tmp:
        nrrdPath = Path(tmp) / "volume.nrrd"
        sitk.WriteImage(image.to_sitk(), str(nrrdPath))
        volumeNode = loadVolume(scene, nrrdPath, name or folder.name)
    # The temporary file is gone; a later "save" must not point at it.
    storage = volumeNode.GetStorageNode()
    volumeNode.SetAndObserveStorageNodeID(None)
    scene.RemoveNode(storage)
    volumeNode.SetAttribute(DICOM_FOLDER_ATTRIBUTE, str(folder.resolve()))
    if image.source is not None and image.source.series_instance_uid:
        volumeNode.SetAttribute(DICOM_SERIES_ATTRIBUTE, image.source.series_instance_uid)
    return volumeNode


def _stem(path: Path) -> str:
    from GTVAutoSegLib.filetypes import image_suffix

    suffix = image_suffix(path.name)
    return path.name[: -len(suffix)] if suffix else path.stem


def readSegmentationFile(path: str | Path):
    """Read a ``.seg.nrrd`` with Slicer's segmentation reader, in a private scene (nothing visible changes).

    Returns:
        A ``vtkSegmentation`` (segments, labelmaps, metadata) for :func:`fillSegmentation`.
    """
    ensureSegmentationConverters()
    scratch = slicer.vtkMRMLScene()
    node = scratch.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    if not Path(path).is_file() or not storage.ReadData(node):
        raise GTVAutoSegError(f"could not read the segmentation written by the inference: {path}")
    if node.GetSegmentation().GetNumberOfSegments() < 1:
        raise GTVAutoSegError(f"{Path(path).name} holds no segment")
    segmentation = slicer.vtkSegmentation()
    segmentation.DeepCopy(node.GetSegmentation())
    return segmentation


def fillSegmentation(outputNode, source, volumeNode, segmentName: str,
                     defaultTerminology: str | None = None, createSurface: bool = True) -> str:
    """Put the target segment of ``source`` into ``outputNode``, placed on ``volumeNode``.

    Other segments of ``outputNode`` (say, organs at risk the user keeps in the same segmentation)
    stay; a target from an earlier run (the segment this function recorded, or one named
    ``segmentName``) is replaced.

    Args:
        outputNode: the segmentation node to fill (in the user's scene).
        source: a ``vtkSegmentation`` from :func:`readSegmentationFile`.
        volumeNode: the CT it was computed on: reference geometry and parent transform.
        segmentName: name of the segment (the model's target, e.g. "PTV70").
        defaultTerminology: Slicer terminology entry string set when the file carries none.
        createSurface: make the closed surface representation (3D view).

    Returns:
        The segment ID of the target segment.
    """
    wasModified = outputNode.StartModify()
    try:
        segmentation = outputNode.GetSegmentation()
        previousId = outputNode.GetAttribute(SEGMENT_ID_ATTRIBUTE)
        for segmentId in [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]:
            if segmentId == previousId or segmentation.GetSegment(segmentId).GetName() == segmentName:
                segmentation.RemoveSegment(segmentId)
        if segmentation.GetNumberOfSegments() == 0:
            segmentation.DeepCopy(source)
            segmentId = segmentation.GetNthSegmentID(0)
        else:
            segment = slicer.vtkSegment()
            segment.DeepCopy(source.GetSegment(source.GetNthSegmentID(0)))
            segmentId = segmentation.GenerateUniqueSegmentID(segmentName)
            if not segmentation.AddSegment(segment, segmentId):
                raise GTVAutoSegError(f"could not add {segmentName} to segmentation '{outputNode.GetName()}'")
        # Required for DICOM Segmentation export, and keeps later edits on the CT's voxel grid.
        outputNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        outputNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        segment = segmentation.GetSegment(segmentId)
        segment.SetName(segmentName)
        segment.SetNameAutoGenerated(False)
        if not segment.GetTerminology() and defaultTerminology:
            segment.SetTerminology(defaultTerminology)
        outputNode.SetAttribute(SEGMENT_ID_ATTRIBUTE, segmentId)
        if outputNode.GetScene() is not None and outputNode.GetDisplayNode() is None:
            outputNode.CreateDefaultDisplayNodes()
        setSurface(outputNode, createSurface)
    finally:
        outputNode.EndModify(wasModified)
    return segmentId


def setSurface(segmentationNode, show: bool) -> None:
    """Create (or drop) the closed surface representation that the 3D view shows."""
    if show:
        segmentationNode.CreateClosedSurfaceRepresentation()
    else:
        segmentationNode.RemoveClosedSurfaceRepresentation()


def sliceCentresRas(volumeNode) -> list[tuple[float, float, float]]:
    """World (RAS) position of the centre of every K slice of the volume."""
    ni, nj, nk = volumeNode.GetImageData().GetDimensions()
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    toWorld = None
    parent = volumeNode.GetParentTransformNode()
    if parent is not None:
        toWorld = vtk.vtkGeneralTransform()
        parent.GetTransformToWorld(toWorld)
    centres = []
    for k in range(nk):
        p = ijkToRas.MultiplyPoint(((ni - 1) / 2.0, (nj - 1) / 2.0, float(k), 1.0))[:3]
        if toWorld is not None:
            p = toWorld.TransformPoint(p)
        centres.append(tuple(float(v) for v in p))
    return centres


def fillProbabilityTable(tableNode, probabilities, threshold: float, volumeNode, selected=None, user=None) -> None:
    """One row per K slice of the volume: index, classifier probability, whether the segmenter ran
    (``selected``; by default ``probability >= threshold``), the reviewer's correction (``user``:
    :data:`USER_INCLUDED`, :data:`USER_NONE` or :data:`USER_EXCLUDED`) and the slice centre RAS."""
    nk = volumeNode.GetImageData().GetDimensions()[2]
    if len(probabilities) != nk:
        raise GTVAutoSegError(f"the inference reported {len(probabilities)} slice probabilities for a volume "
                              f"of {nk} slices (is the CT acquired axially?)")
    if selected is None:
        selected = [float(p) >= threshold for p in probabilities]
    user = list(user) if user is not None else [USER_NONE] * nk
    centres = sliceCentresRas(volumeNode)
    table = vtk.vtkTable()
    arrays = [vtk.vtkIntArray(), vtk.vtkDoubleArray(), vtk.vtkIntArray(), vtk.vtkIntArray(),
              vtk.vtkDoubleArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray()]
    for array, name in zip(arrays, COLUMNS):
        array.SetName(name)
        array.SetNumberOfTuples(nk)
    for k, p in enumerate(probabilities):
        arrays[0].SetValue(k, k)
        arrays[1].SetValue(k, float(p))
        arrays[2].SetValue(k, int(bool(selected[k])))
        arrays[3].SetValue(k, int(user[k]))
        for axis in range(3):
            arrays[4 + axis].SetValue(k, centres[k][axis])
    for array in arrays:
        table.AddColumn(array)
    wasModified = tableNode.StartModify()
    tableNode.SetAndObserveTable(table)
    tableNode.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))
    tableNode.SetColumnDescription("probability", "classifier probability that the slice holds tumour (nan: not run)")
    tableNode.SetColumnDescription("selected", "1 where the target is segmented (classifier or reviewer)")
    tableNode.SetColumnDescription("user", "the reviewer's correction: 1 included, -1 excluded, 0 as the classifier chose")
    tableNode.SetColumnDescription("slice", "K index of the slice in the input volume")
    tableNode.EndModify(wasModified)


@dataclass
class SliceTable:
    """What :func:`readProbabilityTable` reads back: per K slice, in order."""

    probabilities: list[float]
    centres: list[tuple[float, float, float]]
    threshold: float
    selected: list[bool]
    user: list[int]


def readProbabilityTable(tableNode) -> SliceTable:
    """The rows of a table filled by :func:`fillProbabilityTable`."""
    table = tableNode.GetTable()
    columns = {name: table.GetColumnByName(name) for name in COLUMNS}
    required = [name for name in COLUMNS if name != "user"]  # tables saved before reviewer corrections have none
    if table is None or any(columns[name] is None for name in required):
        raise GTVAutoSegError(f"table '{tableNode.GetName()}' is not a GTVAutoSeg slice probability table")
    n = table.GetNumberOfRows()
    user = columns["user"]
    return SliceTable(
        probabilities=[columns["probability"].GetValue(i) for i in range(n)],
        centres=[(columns["R"].GetValue(i), columns["A"].GetValue(i), columns["S"].GetValue(i)) for i in range(n)],
        threshold=float(tableNode.GetAttribute(THRESHOLD_ATTRIBUTE) or "nan"),
        selected=[bool(columns["selected"].GetValue(i)) for i in range(n)],
        user=[int(user.GetValue(i)) if user is not None else USER_NONE for i in range(n)],
    )


def recordSliceDecisions(tableNode, include, exclude) -> None:
    """Mark the reviewer's corrected slices in a filled table (selected and user columns)."""
    current = readProbabilityTable(tableNode)
    selected, user = list(current.selected), list(current.user)
    for indices, chosen, mark in ((include, True, USER_INCLUDED), (exclude, False, USER_EXCLUDED)):
        for k in indices:
            selected[k], user[k] = chosen, mark
    tableData = tableNode.GetTable()
    column = {name: tableData.GetColumnByName(name) for name in ("selected", "user")}
    if column["user"] is None:  # an older table: add the column
        array = vtk.vtkIntArray()
        array.SetName("user")
        array.SetNumberOfTuples(len(user))
        tableData.AddColumn(array)
        column["user"] = array
    for k in range(len(user)):
        column["selected"].SetValue(k, int(selected[k]))
        column["user"].SetValue(k, int(user[k]))
    tableData.Modified()
    tableNode.Modified()


def probabilityTableFor(segmentationNode):
    """The table node the logic linked to this segmentation, or None."""
    return segmentationNode.GetNodeReference(PROBABILITY_TABLE_REFERENCE_ROLE)


# ------------------------------------------------------------------------------ voxels of one segment


def _referenceImage(volumeNode):
    """An empty ``vtkOrientedImageData`` on the volume's voxel grid (its own, untransformed RAS)."""
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volumeNode.GetImageData().GetExtent())
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    reference.SetImageToWorldMatrix(ijkToRas)
    reference.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    return reference


def _array(image) -> np.ndarray:
    """A ``vtkImageData``'s scalars as a ``(k, j, i)`` array view."""
    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[::-1])


def labelmapArray(labelmap, labelValue: int, volumeNode) -> np.ndarray:
    """Voxels of a labelmap (``vtkOrientedImageData``) equal to ``labelValue``, resampled onto the
    volume's grid by position: ``(k, j, i)`` uint8 0/1."""
    shape = volumeNode.GetImageData().GetDimensions()[::-1]
    if labelmap is None or labelmap.IsEmpty():
        return np.zeros(shape, np.uint8)
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, _referenceImage(volumeNode), resampled)
    return (_array(resampled) == labelValue).astype(np.uint8)


def segmentArray(segmentationNode, segmentId: str, volumeNode) -> np.ndarray:
    """A segment's voxels on ``volumeNode``'s grid, ``(k, j, i)`` uint8 0/1 (shared layers included)."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise GTVAutoSegError(f"segmentation '{segmentationNode.GetName()}' has no segment '{segmentId}'")
    labelmap = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap):
        raise GTVAutoSegError(f"segment '{segment.GetName()}' has no binary labelmap")
    return labelmapArray(labelmap, segment.GetLabelValue(), volumeNode)


def replaceSegmentSlices(segmentationNode, segmentId: str, volumeNode, voxels: np.ndarray, slices) -> None:
    """Set a segment's voxels on the given K slices to ``voxels`` (on the volume's grid, ``(k, j, i)``);
    every other slice, and every other segment, stays exactly as it is (manual edits included)."""
    slices = sorted(set(int(k) for k in slices))
    if not slices:
        return
    current = segmentArray(segmentationNode, segmentId, volumeNode)
    if voxels.shape != current.shape:
        raise GTVAutoSegError(f"voxels of shape {voxels.shape} do not fit the volume's {current.shape}")
    current[slices] = voxels[slices] > 0
    labelmap = _referenceImage(volumeNode)
    _array(labelmap)[:] = current
    labelmap.Modified()
    # REPLACE within the volume's extent: the same as a Segment Editor effect applying a modifier.
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            labelmap, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE,
            labelmap.GetExtent()):
        raise GTVAutoSegError(f"could not update segment '{segmentId}' of '{segmentationNode.GetName()}'")


# ------------------------------------------------------------------------------ subject hierarchy


def placeBesideVolume(node, volumeNode) -> None:
    """Put ``node`` under the same subject hierarchy parent as the volume (its study), so that the
    result is listed, saved and exported with the patient it belongs to."""
    scene = volumeNode.GetScene()
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene) if scene is not None else None
    if hierarchy is None:
        return
    volumeItem = hierarchy.GetItemByDataNode(volumeNode)
    if not volumeItem:
        return  # the volume is in no hierarchy to follow
    parent = hierarchy.GetItemParent(volumeItem)
    item = hierarchy.GetItemByDataNode(node)
    if not item:
        hierarchy.CreateItem(parent, node)
    elif hierarchy.GetItemParent(item) != parent:
        hierarchy.SetItemParent(item, parent)
