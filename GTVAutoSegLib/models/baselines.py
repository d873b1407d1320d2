"""2D segmentation baselines from the paper's comparison, behind the same registry as SANet.

The U-Net family comes from MONAI, configured for 2D; DeepLabv3+ is ours (MONAI has none). All are
segmenters: ``(B, in_channels, H, W) -> (B, out_channels, H, W)`` logits; with the default params
any H and W divisible by 32 work.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, kaiming_init
from .registry import NetConfig, register
from .resnet import STAGE_CHANNELS, ResNet18Encoder

UNET_CHANNELS = [32, 64, 128, 256, 512]
UNET_STRIDES = [2, 2, 2, 2]
BASIC_UNET_FEATURES = [32, 32, 64, 128, 256, 32]  # MONAI's default

# MONAI is imported inside the builders: importing monai.networks takes seconds, and the Slicer
# module imports this package at startup whether or not a baseline is ever built.


def _unet(cfg: NetConfig) -> nn.Module:
    from .unet import UNet  # MONAI's module for module, without importing MONAI (inference imports it)

    p = cfg.params
    return UNet(
        spatial_dims=2,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=tuple(p["channels"]),
        strides=tuple(p["strides"]),
        num_res_units=p["num_res_units"],
        norm=p["norm"],
        dropout=p["dropout"],
    )


_UNET_PARAMS = {"channels": UNET_CHANNELS, "strides": UNET_STRIDES, "norm": "instance", "dropout": 0.0}


@register("unet", kind="segmenter", params={**_UNET_PARAMS, "num_res_units": 0})
def _build_unet(cfg: NetConfig) -> nn.Module:
    """MONAI's UNet (``models/unet.py``), plain double-conv units."""
    return _unet(cfg)


@register("resunet", kind="segmenter", params={**_UNET_PARAMS, "num_res_units": 2})
def _build_resunet(cfg: NetConfig) -> nn.Module:
    """MONAI's UNet (``models/unet.py``) with two residual units per level."""
    return _unet(cfg)


@register(
    "attention_unet", kind="segmenter", params={"channels": UNET_CHANNELS, "strides": UNET_STRIDES, "dropout": 0.0}
)
def _build_attention_unet(cfg: NetConfig) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    p = cfg.params
    return AttentionUnet(
        spatial_dims=2,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        channels=tuple(p["channels"]),
        strides=tuple(p["strides"]),
        dropout=p["dropout"],
    )


@register("basic_unet", kind="segmenter", params={"features": BASIC_UNET_FEATURES, "dropout": 0.0})
def _build_basic_unet(cfg: NetConfig) -> nn.Module:
    from monai.networks.nets import BasicUNet

    p = cfg.params
    return BasicUNet(2, cfg.in_channels, cfg.out_channels, features=tuple(p["features"]), dropout=p["dropout"])


class _FinalOutput(nn.Module):
    """Wraps MONAI BasicUNetPlusPlus, which returns a list of outputs, to return only the last.

    MONAI builds the three deep-supervision heads (``final_conv_0_1..3``, 198 parameters at two
    classes) even with deep supervision off; they stay, unused, so MONAI checkpoints still load.

    Shapes:
        ``(B, C, H, W) -> (B, K, H, W)``
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


@register("unetpp", kind="segmenter", params={"features": BASIC_UNET_FEATURES, "dropout": 0.0})
def _build_unetpp(cfg: NetConfig) -> nn.Module:
    from monai.networks.nets import BasicUNetPlusPlus

    p = cfg.params
    net = BasicUNetPlusPlus(
        2, cfg.in_channels, cfg.out_channels, features=tuple(p["features"]), dropout=p["dropout"]
    )
    return _FinalOutput(net)


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (Chen et al., DeepLabv3 2017).

    Parallel branches: a 1x1 conv, one 3x3 conv per dilation rate, and image-level pooling; each
    gives ``out_channels``, then concatenation and a 1x1 Conv-BN-ReLU projection.

    Args:
        in_channels: C_in.
        out_channels: C_out of every branch and of the result.
        rates: dilation rates of the 3x3 branches (6, 12, 18 at output stride 16).

    Shapes:
        ``(B, C_in, h, w) -> (B, C_out, h, w)``
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, out_channels, kernel_size=1)])
        self.branches.extend(ConvBNReLU(in_channels, out_channels, 3, dilation=r) for r in rates)
        # Pooled to 1x1, BatchNorm would see one value per channel at batch size 1 and fail in
        # training; this branch uses a bias instead.
        self.image_pool = nn.Sequential(
            OrderedDict(
                pool=nn.AdaptiveAvgPool2d(1),
                conv=nn.Conv2d(in_channels, out_channels, 1),
                act=nn.ReLU(inplace=True),
            )
        )
        self.project = ConvBNReLU(out_channels * (len(rates) + 2), out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


class DeepLabV3Plus(nn.Module):
    """Our DeepLabv3+ on ResNet18 (after Chen et al., ECCV 2018); not a port of any released code.

    Encoder: :class:`ResNet18Encoder` at output stride 16 (dilated stage 4), :class:`ASPP` on its
    deepest feature. Decoder: the ASPP output upsampled to 1/4, concatenated with stage 1 reduced to
    48 channels, two 3x3 Conv-BN-ReLU, a 1x1 classifier, bilinear upsampling to the input size.

    Args:
        in_channels: input channels (1 for CT).
        out_channels: logits per pixel.
        aspp_channels: channels of the ASPP branches and output.
        aspp_rates: dilation rates of the ASPP 3x3 branches.
        decoder_channels: channels of the decoder convs.

    Shapes:
        ``(B, in_channels, H, W) -> (B, out_channels, H, W)``
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        aspp_channels: int = 256,
        aspp_rates: tuple[int, ...] = (6, 12, 18),
        decoder_channels: int = 256,
    ):
        super().__init__()
        low_channels = 48
        self.encoder = ResNet18Encoder(in_channels, dilate_last=True)
        self.aspp = ASPP(STAGE_CHANNELS[3], aspp_channels, tuple(aspp_rates))
        self.low_level = ConvBNReLU(STAGE_CHANNELS[0], low_channels, kernel_size=1)
        self.decoder = nn.Sequential(
            ConvBNReLU(aspp_channels + low_channels, decoder_channels),
            ConvBNReLU(decoder_channels, decoder_channels),
        )
        self.classifier = nn.Conv2d(decoder_channels, out_channels, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        low = self.low_level(features[0])
        deep = F.interpolate(self.aspp(features[3]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.decoder(torch.cat([deep, low], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register(
    "deeplabv3plus",
    kind="segmenter",
    params={"aspp_channels": 256, "aspp_rates": [6, 12, 18], "decoder_channels": 256},
)
def _build_deeplabv3plus(cfg: NetConfig) -> nn.Module:
    p = cfg.params
    return DeepLabV3Plus(cfg.in_channels, cfg.out_channels, p["aspp_channels"], p["aspp_rates"], p["decoder_channels"])


@register(
    "unetr",
    kind="segmenter",
    params={"img_size": 96, "patch_size": 16, "feature_size": 16, "hidden_size": 768, "mlp_dim": 3072,
            "num_heads": 12, "dropout": 0.0},
)
def _build_unetr(cfg: NetConfig) -> nn.Module:
    """MONAI UNETR in 2D: a ViT encoder on 16 x 16 patches with a convolutional decoder.

    Unlike the convolutional nets it takes one input size only, ``img_size`` x ``img_size``, which
    must be the bundle's preprocessing size. The defaults are MONAI's ViT-B (87 M parameters in 2D);
    ``hidden_size=384, mlp_dim=1536, num_heads=6`` gives a ViT-S encoder (23 M).
    """
    from monai.networks.nets import UNETR

    p = cfg.params
    if p["patch_size"] != 16:
        # MONAI's UNETR decoder hard-codes four 2x up-samplings from the patch grid
        raise ValueError("MONAI's UNETR works with 16 x 16 patches only")
    return UNETR(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        img_size=(p["img_size"], p["img_size"]),
        feature_size=p["feature_size"],
        hidden_size=p["hidden_size"],
        mlp_dim=p["mlp_dim"],
        num_heads=p["num_heads"],
        dropout_rate=p["dropout"],
        spatial_dims=2,
    )


@register("vnet", kind="segmenter3d", params={"patch_depth": 32, "dropout": 0.5})
def _build_vnet(cfg: NetConfig) -> nn.Module:
    """MONAI VNet (Milletari et al. 2016), 3D: ``(B, C, D, H, W) -> (B, K, D, H, W)``.

    It sees ``patch_depth`` consecutive model-space slices at once (training patches and inference
    windows alike); D, H and W must be divisible by 16. ``dropout`` is MONAI's default 0.5 on the
    deeper down and up blocks.
    """
    from monai.networks.nets import VNet

    p = cfg.params
    if p["patch_depth"] < 16 or p["patch_depth"] % 16:
        raise ValueError(f"patch_depth must be a positive multiple of 16, got {p['patch_depth']}")
    d = p["dropout"]
    return VNet(spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels,
                dropout_prob_down=d, dropout_prob_up=(d, d))
