"""MONAI's ``UNet`` (``monai.networks.nets.UNet``, Apache-2.0), rebuilt module for module without
importing MONAI.

Why: ``import monai`` loads every MONAI submodule (apps, auto3dseg, transforms...), about 1.4 s of
a cold ``gtvautoseg segment`` on this project's CPU, for two network definitions. The modules,
their order and names are MONAI's, so a state dict moves between the two with ``strict=True`` and
the forward pass is the same arithmetic (``tests/test_models.py`` checks both against MONAI).

Covered: what our registry builds (kernel 3, PReLU, instance or batch norm, dropout as a float,
bias, "NDA" ordering); anything else is refused rather than silently built differently.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_NORMS = {"instance": {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}, "batch": {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}}


class ADN(nn.Sequential):
    """Norm, dropout, activation (MONAI's "NDA" order): ``N``, ``D``, ``A``; shape kept."""

    def __init__(self, channels: int, dims: int, norm: str, dropout: float):
        super().__init__()
        self.add_module("N", _NORMS[norm][dims](channels))
        self.add_module("D", nn.Dropout(dropout))
        self.add_module("A", nn.PReLU())


class Convolution(nn.Sequential):
    """``conv`` (3^d kernel, padding 1; transposed: output padding stride - 1) then ``adn`` unless
    ``conv_only``: ``(B, Cin, *S) -> (B, Cout, *S / stride)`` (``* stride`` when transposed)."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int, norm: str, dropout: float,
                 conv_only: bool = False, transposed: bool = False):
        super().__init__()
        if transposed:
            conv = _CONV_T[dims](cin, cout, kernel_size=3, stride=stride, padding=1, output_padding=stride - 1)
        else:
            conv = _CONV[dims](cin, cout, kernel_size=3, stride=stride, padding=1)
        self.add_module("conv", conv)
        if not conv_only:
            self.add_module("adn", ADN(cout, dims, norm, dropout))


class ResidualUnit(nn.Module):
    """``subunits`` convolutions (the first strided) plus a residual path (a strided 3^d conv, a 1^d
    conv when only the channels change, else identity): ``(B, Cin, *S) -> (B, Cout, *S / stride)``."""

    def __init__(self, dims: int, cin: int, cout: int, stride: int, subunits: int, norm: str, dropout: float,
                 last_conv_only: bool = False):
        super().__init__()
        self.conv = nn.Sequential()
        self.residual: nn.Module = nn.Identity()
        channels, s = cin, stride
        subunits = max(1, subunits)
        for su in range(subunits):
            self.conv.add_module(f"unit{su:d}", Convolution(dims, channels, cout, s, norm, dropout,
                                                            conv_only=last_conv_only and su == subunits - 1))
            channels, s = cout, 1
        if stride != 1:
            self.residual = _CONV[dims](cin, cout, 3, stride, 1)
        elif cin != cout:
            self.residual = _CONV[dims](cin, cout, 1, stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.residual(x)
        return self.conv(x) + res


class SkipConnection(nn.Module):
    """``(B, C, *S) -> (B, C + C', *S)``: the input and ``submodule``'s output, concatenated on channels."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class UNet(nn.Module):
    """MONAI's UNet: ``(B, in_channels, *S) -> (B, out_channels, *S)`` logits; every side of S
    divisible by the product of ``strides``.

    Args:
        spatial_dims: 2 or 3.
        channels: features per level, top first (at least 2).
        strides: down-sampling per level (``len(channels) - 1`` of them).
        num_res_units: 0 for plain convolutions, else residual units of that many convolutions.
        norm: ``"instance"`` or ``"batch"``.
        dropout: dropout probability.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, channels: Sequence[int],
                 strides: Sequence[int], num_res_units: int = 0, norm: str | tuple = "instance", dropout: float = 0.0):
        super().__init__()
        norm = norm.lower() if isinstance(norm, str) else norm
        if spatial_dims not in _CONV or norm not in _NORMS or not isinstance(dropout, (int, float)):
            raise ValueError(f"UNet here covers 2D/3D, norm {tuple(_NORMS)} and a float dropout; got "
                             f"{spatial_dims}D, norm {norm!r}, dropout {dropout!r}")
        if len(channels) < 2 or len(strides) < len(channels) - 1:
            raise ValueError("UNet needs at least 2 channels and len(channels) - 1 strides")
        self.dims, self.res, self.norm, self.dropout = spatial_dims, num_res_units, norm, float(dropout)
        self.model = self._block(in_channels, out_channels, list(channels), list(strides), True)

    def _block(self, cin: int, cout: int, channels: list[int], strides: list[int], is_top: bool) -> nn.Module:
        c, s = channels[0], strides[0]
        if len(channels) > 2:
            sub, upc = self._block(c, c, channels[1:], strides[1:], False), c * 2
        else:
            sub, upc = self._down(c, channels[1], 1), c + channels[1]
        return nn.Sequential(self._down(cin, c, s), SkipConnection(sub), self._up(upc, cout, s, is_top))

    def _down(self, cin: int, cout: int, stride: int) -> nn.Module:
        if self.res > 0:
            return ResidualUnit(self.dims, cin, cout, stride, self.res, self.norm, self.dropout)
        return Convolution(self.dims, cin, cout, stride, self.norm, self.dropout)

    def _up(self, cin: int, cout: int, stride: int, is_top: bool) -> nn.Module:
        conv = Convolution(self.dims, cin, cout, stride, self.norm, self.dropout,
                           conv_only=is_top and self.res == 0, transposed=True)
        if self.res > 0:
            return nn.Sequential(conv, ResidualUnit(self.dims, cout, cout, 1, 1, self.norm, self.dropout,
                                                    last_conv_only=is_top))
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
