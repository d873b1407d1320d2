"""Batch augmentation in torch, the paper's list: rotation, zoom, vertical flip, elastic distortion,
Gaussian noise, random erasing.

It runs on whatever device the batch is on (the GPU when there is one), with one ``grid_sample`` per
batch for all the geometric parts together, and per-sample random draws from a seeded generator.
Only training batches pass through it; validation and test never do. Ours on purpose (not MONAI's
per-sample dictionary transforms): one batched pass on the device keeps the GPU fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

Probability = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]


@dataclass
class AugmentConfig:
    """Probabilities (per slice) and ranges.

    Args:
        enabled: False turns every augmentation off.
        p_rotate / max_rotate_deg: in-plane rotation, uniform in ``+-max_rotate_deg``.
        p_zoom / zoom_range: isotropic scale factor, uniform in the range (> 1 zooms in).
        p_vflip: flip up-down (anterior-posterior).
        p_lrflip: flip left-right (off by default: the shipped 2D model trained without it).
        p_elastic / elastic_strength / elastic_grid: a smooth random displacement, its standard
            deviation a fraction of the slice side (0.02 = 2 %), interpolated (bicubic) from a
            ``elastic_grid`` x ``elastic_grid`` grid of random vectors.
        p_noise / noise_std: Gaussian noise on the [0, 1] windowed image.
        p_erase / erase_area: one rectangle filled with uniform noise, its area a fraction of the
            slice drawn from the range (the image only; the label keeps the tumour, so the network
            learns to use context).
        p_intensity / intensity_scale / intensity_shift: ``x * scale + shift`` on the windowed
            image, both uniform in their ranges (off by default).

    The 3D locator (``training.locator.augment_volume``) uses rotation, zoom, left-right flip,
    intensity and noise; vertical flip, elastic and erasing are 2D only.
    """

    enabled: bool = True
    p_rotate: Probability = 0.5
    max_rotate_deg: Annotated[float, Field(ge=0, le=180)] = 15.0
    p_zoom: Probability = 0.5
    zoom_range: tuple[Positive, Positive] = (0.85, 1.15)
    p_vflip: Probability = 0.5
    p_elastic: Probability = 0.3
    elastic_strength: Annotated[float, Field(ge=0)] = 0.02
    elastic_grid: Annotated[int, Field(ge=2)] = 6
    p_noise: Probability = 0.3
    noise_std: Annotated[float, Field(ge=0)] = 0.03
    p_erase: Probability = 0.25
    erase_area: tuple[Probability, Probability] = (0.02, 0.1)
    p_lrflip: Probability = 0.0
    p_intensity: Probability = 0.0
    intensity_scale: tuple[Positive, Positive] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.05, 0.05)


def coin(p: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """``(n,)`` bool, each True with probability ``p``."""
    return torch.rand(n, generator=gen, device=device) < p


def uniform(lo: float, hi: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """``(n,)`` float uniform in ``[lo, hi)``."""
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def augment_batch(x: torch.Tensor, y: torch.Tensor | None, cfg: AugmentConfig,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment one training batch.

    Args:
        x: ``(B, 1, H, W)`` float images in ``[0, 1]``.
        y: ``(B, H, W)`` integer masks, or None (classifier batches, whose label is per slice).
        cfg: what to apply.
        gen: random generator on ``x``'s device (seeded by the caller).

    Returns:
        ``(x, y)`` of the same shapes and dtypes; masks stay integer (nearest sampling).
    """
    if not cfg.enabled:
        return x, y
    b, _, h, w = x.shape
    dev = x.device
    one = torch.ones(b, device=dev)
    angle = torch.where(coin(cfg.p_rotate, b, gen, dev),
                        uniform(-cfg.max_rotate_deg, cfg.max_rotate_deg, b, gen, dev), 0 * one) * (math.pi / 180)
    zoom = torch.where(coin(cfg.p_zoom, b, gen, dev), uniform(*cfg.zoom_range, b, gen, dev), one)
    flip = torch.where(coin(cfg.p_vflip, b, gen, dev), -one, one)
    lr = torch.where(coin(cfg.p_lrflip, b, gen, dev), -one, one) if cfg.p_lrflip > 0 else one
    # The affine maps output to input coordinates in [-1, 1]; zoom > 1 samples a smaller region.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * lr, -sin * flip, 0 * one], 1),
                         torch.stack([sin * lr, cos * flip, 0 * one], 1)], 1)
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)

    elastic = coin(cfg.p_elastic, b, gen, dev)
    if elastic.any():
        k = cfg.elastic_grid
        coarse = torch.randn(b, 2, k, k, generator=gen, device=dev) * (2.0 * cfg.elastic_strength)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
        grid = grid + (field * elastic[:, None, None, None]).permute(0, 2, 3, 1)

    x_dtype = x.dtype
    x = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if y is not None:
        y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[:, 0].to(y.dtype)

    if cfg.p_intensity > 0:
        shade = coin(cfg.p_intensity, b, gen, dev)
        scale = torch.where(shade, uniform(*cfg.intensity_scale, b, gen, dev), one)
        shift = torch.where(shade, uniform(*cfg.intensity_shift, b, gen, dev), 0 * one)
        x = x * scale[:, None, None, None] + shift[:, None, None, None]

    noisy = coin(cfg.p_noise, b, gen, dev)
    if noisy.any():
        x = x + torch.randn(x.shape, generator=gen, device=dev) * (cfg.noise_std * noisy[:, None, None, None])

    erase = coin(cfg.p_erase, b, gen, dev)
    if erase.any():
        area = uniform(*cfg.erase_area, b, gen, dev) * h * w
        aspect = torch.exp(uniform(math.log(0.5), math.log(2.0), b, gen, dev))
        eh = (area * aspect).sqrt().clamp(1, h)
        ew = (area / aspect).sqrt().clamp(1, w)
        y0 = torch.rand(b, generator=gen, device=dev) * (h - eh)
        x0 = torch.rand(b, generator=gen, device=dev) * (w - ew)
        rows = torch.arange(h, device=dev)[None, :, None]
        cols = torch.arange(w, device=dev)[None, None, :]
        box = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
               & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]) & erase[:, None, None])
        fill = torch.rand(x.shape, generator=gen, device=dev)
        x = torch.where(box[:, None], fill, x)
    return x.clamp_(0.0, 1.0).to(x_dtype), y
