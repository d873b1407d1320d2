"""The 3D locator of the cascade: a small 3D U-Net over the whole body box on a coarse grid.

It answers "where" in 3D (which slices, which region) at a few millimetres per voxel, where the 2D
networks see one slice at a time; see ``GTVAutoSegLib.coarse`` for its grid.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import NetConfig, build_network, network_kind, register


@register("unet3d", kind="locator3d",
          params={"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 1,
                  "norm": "instance", "dropout": 0.0})
def _build_unet3d(cfg: NetConfig) -> nn.Module:
    """MONAI's UNet in 3D (``models/unet.py``): ``(B, C, D, H, W) -> (B, K, D, H, W)``; D, H, W divisible by the product of
    the strides (16 by default). 2.45 M parameters with the defaults; one forward pass at 64^3
    takes about half a second on one core of this project's CPU."""
    from .unet import UNet  # MONAI's module for module, without importing MONAI

    p = cfg.params
    return UNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                channels=tuple(p["channels"]), strides=tuple(p["strides"]), num_res_units=p["num_res_units"],
                norm=p["norm"], dropout=p["dropout"])


class Ensemble(nn.Module):
    """Members of one architecture, their class probabilities averaged.

    ``(B, C, *S) -> (B, K, *S)``: the log of the mean softmax, so a softmax of the output gives the
    members' mean probability (what nnU-Net's fold ensembles average).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        p = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(p.clamp_min(1e-7))


@register("locator_ensemble", kind="locator3d", params={"member": {"name": "unet3d"}, "count": 2})
def _build_locator_ensemble(cfg: NetConfig) -> nn.Module:
    """``count`` locators of the ``member`` config (a NetConfig as a dict; its channels must be the
    ensemble's), trained separately (other seeds or data), averaged. State keys ``members.<i>.*``."""
    member = NetConfig.from_dict(cfg.params["member"])
    if network_kind(member.name) != "locator3d" or member.name == "locator_ensemble":
        raise ValueError(f"an ensemble member must be a single locator network, got {member.name!r}")
    if (member.in_channels, member.out_channels) != (cfg.in_channels, cfg.out_channels):
        raise ValueError("the ensemble's channels must be its members'")
    if cfg.params["count"] < 1:
        raise ValueError("an ensemble needs at least one member")
    return Ensemble([build_network(member) for _ in range(cfg.params["count"])])
