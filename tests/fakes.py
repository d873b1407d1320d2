"""Deterministic stand-in networks, registered like any other, so that cascade and pipeline tests
know exactly which slices and voxels must come out (untrained nets give arbitrary masks).

Both read "bright" input: a CT value that the test's window maps to >= ``level``.
"""

import torch
import torch.nn as nn

from GTVAutoSegLib.models import register


class MaxClassifier(nn.Module):
    """``(B, k, H, W) -> (B, 2)``: tumour logit positive where the centre slice's max exceeds ``level``."""

    def __init__(self, level: float):
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(level)), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        c = x.shape[1] // 2
        score = (x[:, c].amax(dim=(1, 2)) - self.level) * 100.0
        return torch.stack([torch.zeros_like(score), score], dim=1)


class BrightSegmenter(nn.Module):
    """``(B, k, H, W) -> (B, 2, H, W)``: foreground where the centre slice's pixel exceeds ``level``
    (3D alike: ``(B, 1, D, H, W) -> (B, 2, D, H, W)``)."""

    def __init__(self, level: float):
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(level)), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        c = x.shape[1] // 2
        fg = (x[:, c:c + 1] - self.level) * 100.0
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


@register("test_max_classifier", kind="classifier", params={"level": 0.8})
def _max_classifier(cfg):
    return MaxClassifier(cfg.params["level"])


@register("test_bright_segmenter", kind="segmenter", params={"level": 0.8})
def _bright_segmenter(cfg):
    return BrightSegmenter(cfg.params["level"])


@register("test_bright_segmenter3d", kind="segmenter3d", params={"level": 0.8, "patch_depth": 16})
def _bright_segmenter3d(cfg):
    # the same rule voxel by voxel: (1, 1, D, H, W) -> (1, 2, D, H, W)
    return BrightSegmenter(cfg.params["level"])


@register("test_bright_locator", kind="locator3d", params={"level": 0.8})
def _bright_locator(cfg):
    # voxel by voxel on the coarse grid: (1, 1, D, H, W) -> (1, 2, D, H, W)
    return BrightSegmenter(cfg.params["level"])
