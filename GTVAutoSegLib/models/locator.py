"""The 3D locator of the cascade: a small 3D U-Net over the whole body box on a coarse grid.

It answers "where" in 3D (which slices, which region) at a few millimetres per voxel, where the 2D
networks see one slice at a time; see ``GTVAutoSegLib.coarse`` for its grid.
"""

from __future__ import annotations

from torch import nn

from .registry import NetConfig, register


@register("unet3d", kind="locator3d",
          params={"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 1,
                  "norm": "instance", "dropout": 0.0})
def _build_unet3d(cfg: NetConfig) -> nn.Module:
    """MONAI UNet in 3D: ``(B, C, D, H, W) -> (B, K, D, H, W)``; D, H, W divisible by the product of
    the strides (16 by default). 2.45 M parameters with the defaults; one forward pass at 64^3
    takes about half a second on one core of this project's CPU."""
    from monai.networks.nets import UNet

    p = cfg.params
    return UNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                channels=tuple(p["channels"]), strides=tuple(p["strides"]), num_res_units=p["num_res_units"],
                norm=p["norm"], dropout=p["dropout"])
