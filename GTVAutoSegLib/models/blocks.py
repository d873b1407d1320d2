"""Small named building blocks shared by the networks."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, padded to keep the size at stride 1.

    Args:
        in_channels: C_in.
        out_channels: C_out.
        kernel_size: odd kernel size.
        stride: convolution stride.
        dilation: convolution dilation; the padding grows with it.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, dilation: int = 1):
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
                bn=nn.BatchNorm2d(out_channels),
                act=nn.ReLU(inplace=True),
            )
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 Conv-BN, a shortcut, ReLU after the sum (He et al. 2016).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        stride: stride of the first conv (2 halves H and W).
        dilation: dilation of both 3x3 convs (keeps the size while widening the receptive field).
        downsample: the shortcut branch; needed when the stride or the channel count changes.

    Shapes:
        ``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def kaiming_init(module: nn.Module) -> None:
    """He-normal conv weights (fan-out, ReLU), BN to identity, zero conv biases, for all submodules."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
