"""ResNet18 encoder and the slice classifier of the HCF cascade (Shi et al., CMIG 2024)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .blocks import BasicBlock, kaiming_init
from .registry import NetConfig, register

STAGE_CHANNELS = (64, 128, 256, 512)


class ResNet18Encoder(nn.Module):
    """ResNet18 trunk (He et al. 2016) returning the output of each of its four stages.

    Stem: 7x7 stride-2 conv (no bias), BN, ReLU, 3x3 stride-2 max pool; then four stages of two
    :class:`BasicBlock` with 64, 128, 256 and 512 channels, the last three starting with stride 2.

    Args:
        in_channels: input channels (1 for CT).
        dilate_last: run stage 4 at stride 1 with dilation 2, so the deepest features stay at 1/16
            instead of 1/32 (output stride 16, as SANet and DeepLabv3+ want).

    Shapes:
        ``(B, C, H, W)`` -> four tensors ``(B, 64, H/4, W/4)``, ``(B, 128, H/8, W/8)``,
        ``(B, 256, H/16, W/16)``, ``(B, 512, H/32, W/32)`` (``H/16, W/16`` with ``dilate_last``).
    """

    out_channels = STAGE_CHANNELS

    def __init__(self, in_channels: int = 1, dilate_last: bool = False):
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                bn=nn.BatchNorm2d(64),
                act=nn.ReLU(inplace=True),
                pool=nn.MaxPool2d(3, stride=2, padding=1),
            )
        )
        self.output_stride = 16 if dilate_last else 32
        self.layer1 = _stage(64, 64, stride=1)
        self.layer2 = _stage(64, 128, stride=2)
        self.layer3 = _stage(128, 256, stride=2)
        self.layer4 = _stage(256, 512, stride=1, dilation=2) if dilate_last else _stage(256, 512, stride=2)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


def _stage(in_channels: int, out_channels: int, stride: int, dilation: int = 1) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                bn=nn.BatchNorm2d(out_channels),
            )
        )
    # The first block of a dilated stage keeps dilation 1 where the resolution hands over, as in
    # DeepLab, to avoid gridding artefacts right at the transition.
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride, dilation=1, downsample=downsample),
        BasicBlock(out_channels, out_channels, 1, dilation=dilation),
    )


class ResNet18Classifier(nn.Module):
    """Slice classifier: does this CT slice contain tumour? ResNet18, global average pool, FC.

    Args:
        in_channels: input channels (1 for CT).
        num_classes: logits out (2: no tumour / tumour).

    Shapes:
        ``(B, in_channels, H, W) -> (B, num_classes)`` logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2):
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_CHANNELS[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deepest = self.encoder(x)[-1]
        return self.fc(torch.flatten(self.pool(deepest), 1))


@register("resnet18_classifier", kind="classifier")
def _build_resnet18_classifier(cfg: NetConfig) -> nn.Module:
    return ResNet18Classifier(cfg.in_channels, cfg.out_channels)
