"""Render the extension's screenshot: the module's result on a real CT, offscreen.

    .venv/bin/python scripts/render_screenshot.py [--case pt_201] [--output Screenshots/GTVAutoSeg-1.png]

Loads an OpenKBP validation CT from ../shared/data into an MRML scene (slicer-core), runs the
module logic with the shipped model exactly as the Slicer module does (CLI subprocess, segmentation
node, probability table), then draws what Slicer's views would show: axial and coronal slices
through the target with its outline, and the 3D view of the target's closed surface inside the
skin, rendered by VTK offscreen. Needs no display.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "GTVAutoSeg"))
DATA = ROOT.parent / "shared" / "data" / "openkbp" / "validation"
WINDOW = (-160.0, 240.0)
PANEL = 400  # pixels per view


def segmentCase(case: str):
    import slicer  # noqa: F401  (slicer-core)

    from GTVAutoSegSlicerLib import SegmentationLogic, SegmentationParameters, testing
    from GTVAutoSegSlicerLib.nodes import loadVolume, segmentArray

    path = DATA / case / "ct.nii.gz"
    if not path.is_file():
        sys.exit(f"render_screenshot: {path} not found (the real data lives in ../shared/data)")
    scene, keep = testing.newScene()
    volume = loadVolume(scene, path, case)
    run = SegmentationLogic(scene).process(volume, parameters=SegmentationParameters(device="cpu"))
    node = run.segmentationNode
    segmentId = node.GetSegmentation().GetNthSegmentID(0)
    return (scene, keep), volume, node, segmentId, testing.volumeArray(volume), segmentArray(node, segmentId, volume), run


def _rasAxes(volume) -> tuple[list[int], list[float]]:
    """For each RAS axis: the IJK axis along it and the sign of that direction (axis-aligned grids)."""
    from GTVAutoSegSlicerLib.testing import ijkToRasArray

    m = ijkToRasArray(volume)[:3, :3]
    axes = [int(np.argmax(np.abs(m[r]))) for r in range(3)]
    return axes, [float(np.sign(m[r, axes[r]])) for r in range(3)]


def _toRas(array: np.ndarray, volume) -> tuple[np.ndarray, np.ndarray]:
    """``(k, j, i)`` voxels -> an array indexed ``(R, A, S)`` increasing, and its spacing per axis."""
    axes, signs = _rasAxes(volume)
    spacing = np.array(volume.GetSpacing())  # (i, j, k)
    ijk = np.transpose(array, (2, 1, 0))  # (i, j, k)
    ras = np.transpose(ijk, axes)
    for r in range(3):
        if signs[r] < 0:
            ras = np.flip(ras, r)
    return ras, spacing[axes]


def _view(ct2d: np.ndarray, mask2d: np.ndarray, spacing: tuple[float, float], color) -> np.ndarray:
    """A slice as Slicer shows it: rows top to bottom, columns left to right (already oriented),
    grey CT in the soft-tissue window, the target filled lightly and outlined; square pixels."""
    from scipy import ndimage

    body = np.argwhere(ct2d > -500.0)  # crop to the patient: the CT's field of view is mostly air
    if len(body):
        (y0, x0), (y1, x1) = body.min(axis=0), body.max(axis=0) + 1
        pad = 6
        y0, x0, y1, x1 = max(y0 - pad, 0), max(x0 - pad, 0), y1 + pad, x1 + pad
        ct2d, mask2d = ct2d[y0:y1, x0:x1], mask2d[y0:y1, x0:x1]
    lo, hi = WINDOW
    grey = np.clip((ct2d - lo) / (hi - lo), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    inside = mask2d > 0
    edge = inside & ~ndimage.binary_erosion(inside)
    rgb[inside] = 0.75 * rgb[inside] + 0.25 * np.asarray(color)
    rgb[edge] = color
    zoom = (spacing[0] / min(spacing), spacing[1] / min(spacing))
    rgb = ndimage.zoom(rgb, (*zoom, 1), order=0)
    scale = PANEL / max(rgb.shape[:2])
    rgb = ndimage.zoom(rgb, (scale, scale, 1), order=1)
    canvas = np.zeros((PANEL, PANEL, 3))
    y0, x0 = (PANEL - rgb.shape[0]) // 2, (PANEL - rgb.shape[1]) // 2
    canvas[y0:y0 + rgb.shape[0], x0:x0 + rgb.shape[1]] = np.clip(rgb, 0, 1)
    return canvas


def _render3d(volume, node, segmentId, ctRas: np.ndarray, spacing: np.ndarray, color) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    surface = vtk.vtkPolyData()
    node.GetClosedSurfaceRepresentation(segmentId, surface)
    # The skin, from the CT at -300 HU, on the RAS-aligned grid (origin at the volume's RAS corner).
    image = vtk.vtkImageData()
    image.SetDimensions(*ctRas.shape)
    image.SetSpacing(*spacing)
    bounds = [0.0] * 6
    volume.GetRASBounds(bounds)
    image.SetOrigin(bounds[0] + spacing[0] / 2, bounds[2] + spacing[1] / 2, bounds[4] + spacing[2] / 2)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(np.transpose(ctRas, (2, 1, 0))).ravel().astype(np.float32)))
    skin = vtk.vtkFlyingEdges3D()
    skin.SetInputData(image)
    skin.SetValue(0, -300.0)
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.76, 0.76, 0.89)  # Slicer's 3D view
    for data, rgb, opacity in ((skin.GetOutputPort(), (0.93, 0.8, 0.7), 0.18), (surface, color, 1.0)):
        mapper = vtk.vtkPolyDataMapper()
        if isinstance(data, vtk.vtkPolyData):
            mapper.SetInputData(data)
        else:
            mapper.SetInputConnection(data)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*rgb)
        actor.GetProperty().SetOpacity(opacity)
        renderer.AddActor(actor)
    camera = renderer.GetActiveCamera()
    centre = np.array(surface.GetCenter()) if surface.GetNumberOfPoints() else np.array(image.GetCenter())
    camera.SetFocalPoint(*centre)
    camera.SetPosition(*(centre + np.array([-250.0, 650.0, 120.0])))  # anterior, a little from the right
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera()
    camera.Dolly(1.35)
    renderer.ResetCameraClippingRange()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(PANEL, PANEL)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    out = grab.GetOutput()
    pixels = vtk_to_numpy(out.GetPointData().GetScalars()).reshape(PANEL, PANEL, -1)[..., :3]
    window.Finalize()
    return np.flipud(pixels).astype(np.float64) / 255.0


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    """Burn a short caption into the top-left corner (VTK's text rendering, offscreen)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

    h, w = panel.shape[:2]
    image = vtk.vtkImageData()
    image.SetDimensions(w, h, 1)
    image.GetPointData().SetScalars(numpy_to_vtk(np.flipud(panel * 255).astype(np.uint8).reshape(-1, 3)))
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(image)
    caption = vtk.vtkTextActor()
    caption.SetInput(text)
    caption.GetTextProperty().SetFontSize(16)
    caption.GetTextProperty().SetColor(1.0, 0.85, 0.2)
    caption.GetTextProperty().SetBackgroundColor(0.0, 0.0, 0.0)
    caption.GetTextProperty().SetBackgroundOpacity(0.7)
    caption.SetDisplayPosition(8, h - 26)
    renderer = vtk.vtkRenderer()
    renderer.AddActor(actor)
    renderer.AddViewProp(caption)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(w, h)
    window.AddRenderer(renderer)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    camera.ParallelProjectionOn()
    camera.SetParallelScale(h / 2)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    pixels = vtk_to_numpy(grab.GetOutput().GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    window.Finalize()
    return np.flipud(pixels).astype(np.float64) / 255.0


def render(case: str, output: Path) -> Path:
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    from GTVAutoSegLib.segfile import target_color

    _keep, volume, node, segmentId, ct, mask, run = segmentCase(case)
    name = node.GetSegmentation().GetSegment(segmentId).GetName()
    color = target_color(name)
    ctRas, spacing = _toRas(ct.astype(np.float32), volume)
    maskRas, _ = _toRas(mask, volume)
    r, a, s = (int(round(c)) for c in np.argwhere(maskRas).mean(axis=0))
    # Axial: anterior at the top, the patient's right on the left. Coronal: superior at the top.
    axial = np.flipud(ctRas[::-1, :, s].T)
    axialMask = np.flipud(maskRas[::-1, :, s].T)
    coronal = np.flipud(ctRas[::-1, a, :].T)
    coronalMask = np.flipud(maskRas[::-1, a, :].T)
    panels = [
        _label(_view(axial, axialMask, (spacing[1], spacing[0]), color), f"Axial: {name} ({case})"),
        _label(_view(coronal, coronalMask, (spacing[2], spacing[0]), color), "Coronal"),
        _label(_render3d(volume, node, segmentId, ctRas, spacing, color),
               f"3D: {run.report['volume_cc']:.0f} cc on {run.report['slices_segmented']} slices"),
    ]
    strip = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=0.2) for p in panels], axis=1)[:, :-4]
    pixels = (np.clip(strip, 0, 1) * 255).astype(np.uint8)
    image = vtk.vtkImageData()
    image.SetDimensions(pixels.shape[1], pixels.shape[0], 1)
    image.GetPointData().SetScalars(numpy_to_vtk(np.flipud(pixels).reshape(-1, 3)))
    output.parent.mkdir(parents=True, exist_ok=True)
    from GTVAutoSegLib.outputs import atomic_output

    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetInputData(image)
    with atomic_output(output) as tmp:
        writer.SetFileName(str(tmp))
        writer.Write()
    return output


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", default="pt_201", help="OpenKBP validation case (default pt_201)")
    p.add_argument("--output", default=str(ROOT / "Screenshots" / "GTVAutoSeg-1.png"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory():
        path = render(args.case, Path(args.output))
    print(f"{path}: {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
