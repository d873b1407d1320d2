"""One CT in, one GTV mask on the CT's own grid out: preprocessing -> cascade -> inverse."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bundle import ModelBundle, PostprocessSpec
from .cascade import Cascade, CancelFn, CombineSpec, ProgressFn
from .errors import Cancelled, GTVError
from .image import Image
from .preprocessing import prepare, restore_mask, restore_slice_values
from .slices import SliceSelection


@dataclass
class SegmentationResult:
    """Attributes:
        mask: uint8 GTV mask on exactly the input image's grid.
        slice_probs: ``(Z,)`` classifier probability per slice of the input (array axis 0); NaN
            when the classifier was not used.
        selected: ``(Z,)`` bool, slices the segmenter ran on.
        threshold: the classifier threshold used.
        timings: seconds per stage (preprocess, classifier, segmenter, inverse).
        precision: the networks' arithmetic, ``fp32`` or ``bf16``.
        engine: what ran the networks, ``torch`` or ``onnx`` (ONNX Runtime).
    """

    mask: Image
    slice_probs: np.ndarray
    selected: np.ndarray
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"
    engine: str = "torch"

    def volume_cc(self) -> float:
        return float(self.mask.array.sum()) * float(np.prod(self.mask.spacing)) / 1000.0


def keep_components(mask: np.ndarray, spacing_xyz, spec: PostprocessSpec) -> np.ndarray:
    """Drop small 3D components and keep the N largest, as the postprocess spec says.

    Ours on purpose (not MONAI's KeepLargestConnectedComponent): it also drops components below a
    physical volume in cc."""
    if spec.keep_largest <= 0 and spec.min_component_cc <= 0:
        return mask
    spans = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if spans[0].size == 0:
        return mask
    box = tuple(slice(int(s[0]), int(s[-1]) + 1) for s in spans)  # labelled within the mask's box only
    out = np.zeros_like(mask)
    out[box] = _keep_components(mask[box], spacing_xyz, spec)
    return out


def _keep_components(mask: np.ndarray, spacing_xyz, spec: PostprocessSpec) -> np.ndarray:
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.ones(n, bool)
    if spec.min_component_cc > 0:
        keep &= sizes * float(np.prod(spacing_xyz)) / 1000.0 >= spec.min_component_cc
    if spec.keep_largest > 0:
        order = np.argsort(sizes)[::-1]
        keep[order[spec.keep_largest:]] = False
    return np.isin(labels, np.flatnonzero(keep) + 1).astype(mask.dtype)


class Segmenter:
    """A loaded bundle ready to segment many CTs (the networks are built once).

    Args:
        bundle: the model.
        device: ``auto`` / ``cpu`` / ``cuda``.
        threshold: the slice gate's threshold (the classifier's, or the locator's when the locator
            picks the slices); None takes the bundle's.
        use_classifier: False gates no slice out: the segmenter runs on every slice and the
            classifier is neither loaded nor run (the "SANet alone" arm that measures what the
            cascade adds).
        postprocess / combine: override the bundle's (e.g. to compare combinations of its networks).
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``fp32`` or ``bf16`` (``cascade.PRECISIONS``).
        nets: the bundle's networks already loaded elsewhere (``onnxnets.OnnxModel``: ONNX Runtime
            sessions on the CPU, fp32, resizes in numpy, no torch imported); None builds the
            bundle's torch networks on ``device``.
    """

    def __init__(self, bundle: ModelBundle, device: str = "auto", threshold: float | None = None,
                 use_classifier: bool = True, postprocess: PostprocessSpec | None = None,
                 combine: CombineSpec | None = None, precision: str = "auto", nets=None):
        self.bundle = bundle
        self.engine = "torch" if nets is None else nets.engine
        if nets is None:
            from .device import resolve_device

            self.device = resolve_device(device)
        else:
            nets.check_run_options(device, precision)
            self.device = "cpu"
        self.threshold = bundle.threshold if threshold is None else float(threshold)
        if not np.isfinite(self.threshold):  # NaN would silently select no slice at all
            raise GTVError(f"classifier threshold must be a finite number, got {self.threshold}")
        self.use_classifier = use_classifier
        self.postprocess = postprocess or bundle.postprocess
        combine = combine or bundle.combine
        needs_locator = combine.uses_locator()
        if nets is None:
            from .models import network_kind, resolve_config

            # Without the gate the classifier never runs, so its weights are not even loaded.
            classifier = bundle.build_classifier() if use_classifier else None
            segmenter = bundle.build_segmenter()
            seg_cfg = resolve_config(bundle.segmenter)
            depth = seg_cfg.params["patch_depth"] if network_kind(seg_cfg.name) == "segmenter3d" else None
            locator = bundle.build_locator() if needs_locator else None
        else:
            classifier = nets.classifier if use_classifier else None
            segmenter, depth = nets.segmenter, nets.segmenter_depth
            locator = nets.locator if needs_locator else None
        # The networks' resizes: torch's, or with nets that do not use torch the same in numpy.
        self.resizer = "torch" if nets is None else "numpy"
        self.cascade = Cascade(classifier, segmenter, self.device, segmenter_depth=depth,
                               locator=locator, coarse=bundle.coarse,
                               combine=combine, classifier_context=bundle.classifier_context,
                               segmenter_context=bundle.segmenter_context,
                               has_classifier=bundle.classifier is not None, precision=precision,
                               resizer=self.resizer)

    def to_mask(self, image: Image, seg_probs: np.ndarray, state) -> np.ndarray:
        """Model-space foreground probabilities (``state`` from ``prepare(image, ...)``) -> uint8
        mask on the image's grid: the exact inverse, probability >= 0.5, the postprocess spec."""
        return keep_components(restore_mask(seg_probs, state, 0.5, resizer=self.resizer), image.spacing, self.postprocess)

    def __call__(self, image: Image, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None, selection: SliceSelection | None = None) -> SegmentationResult:
        """``selection``: the reviewer's included / excluded slices, or ``only`` slices to segment
        without the classifier; indices along ``image.array``'s axis 0."""
        if selection is not None:
            selection.check(image.array.shape[0])
        timings = {}
        t = time.perf_counter()
        if progress:
            progress("preprocess", 0.0)
        slices, state = prepare(image, self.bundle.preprocess, self.resizer)
        timings["preprocess"] = time.perf_counter() - t
        if cancel is not None and cancel():
            raise Cancelled("cancelled after preprocessing")

        use_classifier = self.use_classifier and (selection is None or selection.runs_classifier)
        threshold = self.threshold if use_classifier else -1.0
        select = None
        if selection is not None and not selection.empty:  # corrected in the input's slice order
            def select(chosen):
                return selection.apply(restore_slice_values(chosen, state))[state.original_slice_index]
        result = self.cascade(slices, threshold, progress, cancel, use_classifier=use_classifier, select=select,
                              pixel_mm=state.model_spacing[:2])
        timings.update(result.timings)

        t = time.perf_counter()
        if progress:
            progress("inverse", 0.0)
        mask = self.to_mask(image, result.seg_probs, state)
        slice_probs = restore_slice_values(result.slice_probs, state)
        selected = restore_slice_values(result.selected.astype(np.float32), state) > 0.5
        timings["inverse"] = time.perf_counter() - t
        if progress:
            progress("inverse", 1.0)
        return SegmentationResult(image.with_array(mask), slice_probs, selected, threshold, timings,
                                  self.cascade.precision, self.engine)


def segment(image: Image, bundle: ModelBundle, device: str = "auto", threshold: float | None = None,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> SegmentationResult:
    """Segment one CT with a bundle (builds the networks; use ``Segmenter`` for many CTs)."""
    return Segmenter(bundle, device, threshold)(image, progress, cancel)
