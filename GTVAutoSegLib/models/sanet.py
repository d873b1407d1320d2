"""SANet: the slice segmenter of the HCF cascade (Shi et al., CMIG 2024).

ResNet18 encoder at output stride 16, a Pyramid Pooling Module bridge, and a decoder of Spatial
Alignment Modules that learn a per-pixel offset to warp the coarse map onto the shallower feature
before adding them, instead of upsampling blindly. All decoder levels are fused at 1/4 resolution.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, kaiming_init
from .registry import NetConfig, register
from .resnet import STAGE_CHANNELS, ResNet18Encoder

DECODER_CHANNELS = 128


class PyramidPooling(nn.Module):
    """Pyramid Pooling Module (Zhao et al., PSPNet 2017): context from several pooled grids.

    Each bin size pools the input to ``bin x bin``, reduces it to ``C_in / 4`` channels with a 1x1
    conv and upsamples it back; the branches are concatenated with the input and fused by a 3x3
    Conv-BN-ReLU.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        bins: pooled grid sizes.

    Shapes:
        ``(B, C_in, h, w) -> (B, C_out, h, w)``
    """

    def __init__(self, in_channels: int, out_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        branch_channels = in_channels // 4
        self.bins = tuple(bins)
        self.branches = nn.ModuleList()
        for size in self.bins:
            if size == 1:
                # A 1x1 pooled map with batch size 1 gives BatchNorm a single value per channel,
                # which fails in training; the image-level branch uses a bias instead.
                reduce = nn.Sequential(
                    OrderedDict(conv=nn.Conv2d(in_channels, branch_channels, 1), act=nn.ReLU(inplace=True))
                )
            else:
                reduce = ConvBNReLU(in_channels, branch_channels, kernel_size=1)
            self.branches.append(nn.Sequential(nn.AdaptiveAvgPool2d(size), reduce))
        self.fuse = ConvBNReLU(in_channels + branch_channels * len(self.bins), out_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(b(x), size=size, mode="bilinear", align_corners=False) for b in self.branches]
        return self.fuse(torch.cat([x, *pooled], dim=1))


class SpatialAlignment(nn.Module):
    """Spatial Alignment Module: warp a coarse decoder map onto a shallow encoder feature, then add.

    The shallow feature is reduced to ``channels`` (1x1 Conv-BN-ReLU). Both maps are reduced to
    ``channels / 2`` by 1x1 convs, the coarse one upsampled, and a 3x3 conv on their concatenation
    predicts a 2-channel offset in pixels of the shallow grid. The coarse map is sampled (bilinear)
    at the identity grid plus that offset and added to the reduced shallow feature.

    The offset conv starts at zero, and sampling uses ``align_corners=False`` with border padding,
    which with a zero offset is exactly ``F.interpolate(..., mode="bilinear", align_corners=False)``:
    an untrained module is plain upsampling, and ``use_sam=False`` is the same module without the
    learned offset (the paper's ablation).

    Args:
        shallow_channels: channels of the shallow encoder feature.
        channels: channels of the coarse map and of the output.
        use_sam: learn the offset; False upsamples the coarse map bilinearly instead.

    Shapes:
        coarse ``(B, channels, h, w)``, shallow ``(B, shallow_channels, H, W)``
        -> ``(B, channels, H, W)``
    """

    def __init__(self, shallow_channels: int, channels: int = DECODER_CHANNELS, use_sam: bool = True):
        super().__init__()
        self.reduce = ConvBNReLU(shallow_channels, channels, kernel_size=1)
        self.use_sam = use_sam
        if use_sam:
            self.down_coarse = nn.Conv2d(channels, channels // 2, 1, bias=False)
            self.down_shallow = nn.Conv2d(channels, channels // 2, 1, bias=False)
            self.offset = nn.Conv2d(channels, 2, 3, padding=1, bias=False)

    def reset_offset(self) -> None:
        """Zero the offset conv, so the module starts as plain bilinear upsampling."""
        if self.use_sam:
            nn.init.zeros_(self.offset.weight)

    def forward(self, coarse: torch.Tensor, shallow: torch.Tensor) -> torch.Tensor:
        shallow = self.reduce(shallow)
        size = shallow.shape[-2:]
        if not self.use_sam:
            return shallow + F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        coarse_small = F.interpolate(self.down_coarse(coarse), size=size, mode="bilinear", align_corners=False)
        offset = self.offset(torch.cat([coarse_small, self.down_shallow(shallow)], dim=1))
        return shallow + warp(coarse, offset)


def warp(image: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` bilinearly at the pixel centres of the offset's grid, moved by ``offset``.

    Args:
        image: ``(B, C, h, w)``, any size; it is resampled onto the offset's ``(H, W)`` grid.
        offset: ``(B, 2, H, W)`` displacement (x, y) in pixels of the ``(H, W)`` grid.

    Returns:
        ``(B, C, H, W)``; a zero offset gives bilinear upsampling with ``align_corners=False``.
    """
    _, _, height, width = offset.shape
    # The grid follows the offset's device, but is built and sampled in at least float32: in half or
    # bfloat16 a normalised coordinate near 1 is off by up to half a pixel on a 128-pixel grid.
    dtype = torch.promote_types(offset.dtype, torch.float32)
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, device=offset.device, dtype=dtype)
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, device=offset.device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    offset = offset.to(dtype)
    # One pixel spans 2 / size in normalised coordinates (align_corners=False).
    grid = torch.stack([grid_x + offset[:, 0] * (2 / width), grid_y + offset[:, 1] * (2 / height)], dim=-1)
    warped = F.grid_sample(image.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped.to(image.dtype)


class SANet(nn.Module):
    """SANet segmenter: ResNet18 (output stride 16) + PPM bridge + three SAM decoder levels.

    Decoder: the bridge maps stage 4 to 128 channels at 1/16; SAMs align it onto stage 3 (1/16),
    then stage 2 (1/8), then stage 1 (1/4). The bridge output and the three SAM outputs are upsampled
    to 1/4, concatenated (512 channels), fused by a 1x1 Conv-BN-ReLU to 128, classified by a 1x1
    conv and upsampled bilinearly to the input size.

    The fusion is 1x1 rather than 3x3 so that the whole network has 12.79 M parameters, close to
    the 12.82 M the paper reports; a 3x3 fusion would bring it to 13.32 M.

    Args:
        in_channels: input channels (1 for CT).
        out_channels: logits per pixel (2: background / tumour).
        use_sam: spatial alignment in the decoder; False upsamples bilinearly (paper's ablation).
        use_ppm: pyramid pooling bridge; False uses a 1x1 Conv-BN-ReLU 512 -> 128 instead.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits, for H and W divisible by 32
        (other sizes run, with some misalignment from the rounding of the strided convs).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, use_sam: bool = True, use_ppm: bool = True):
        super().__init__()
        c = DECODER_CHANNELS
        self.encoder = ResNet18Encoder(in_channels, dilate_last=True)
        self.bridge = PyramidPooling(STAGE_CHANNELS[3], c) if use_ppm else ConvBNReLU(STAGE_CHANNELS[3], c, 1)
        # Deep to shallow: stage 3 (1/16), stage 2 (1/8), stage 1 (1/4).
        self.align = nn.ModuleList(SpatialAlignment(STAGE_CHANNELS[i], c, use_sam) for i in (2, 1, 0))
        self.fuse = ConvBNReLU(c * (1 + len(self.align)), c, kernel_size=1)
        self.classifier = nn.Conv2d(c, out_channels, 1)
        kaiming_init(self)
        for sam in self.align:
            sam.reset_offset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._segment(x)[0]

    def _segment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation logits ``(B, K, H, W)`` and the deepest encoder feature ``(B, 512, H/16, W/16)``."""
        features = self.encoder(x)
        level = self.bridge(features[3])
        levels = [level]
        for sam, shallow in zip(self.align, (features[2], features[1], features[0])):
            level = sam(level, shallow)
            levels.append(level)
        quarter = levels[-1].shape[-2:]
        levels = [t if t.shape[-2:] == quarter else _resize(t, quarter) for t in levels]
        logits = self.classifier(self.fuse(torch.cat(levels, dim=1)))
        return _resize(logits, x.shape[-2:]), features[3]


class SANetMTL(SANet):
    """Multi-task baseline: SANet plus a slice-level tumour classifier on the deepest feature.

    Args:
        in_channels, out_channels, use_sam, use_ppm: as :class:`SANet`.
        num_classes: logits of the slice classifier head (global average pool + FC).

    Shapes:
        ``(B, in_channels, H, W)`` -> ``((B, out_channels, H, W), (B, num_classes))``
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        use_sam: bool = True,
        use_ppm: bool = True,
        num_classes: int = 2,
    ):
        super().__init__(in_channels, out_channels, use_sam, use_ppm)
        self.cls_pool = nn.AdaptiveAvgPool2d(1)
        self.cls_fc = nn.Linear(STAGE_CHANNELS[3], num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        seg, deepest = self._segment(x)
        return seg, self.cls_fc(torch.flatten(self.cls_pool(deepest), 1))


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register("sanet", kind="segmenter", params={"use_sam": True, "use_ppm": True})
def _build_sanet(cfg: NetConfig) -> nn.Module:
    return SANet(cfg.in_channels, cfg.out_channels, cfg.params["use_sam"], cfg.params["use_ppm"])


@register("sanet_mtl", kind="segmenter", params={"use_sam": True, "use_ppm": True, "num_classes": 2})
def _build_sanet_mtl(cfg: NetConfig) -> nn.Module:
    p = cfg.params
    return SANetMTL(cfg.in_channels, cfg.out_channels, p["use_sam"], p["use_ppm"], p["num_classes"])
