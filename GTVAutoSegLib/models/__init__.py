"""Networks of the HCF cascade (ResNet18 slice classifier, SANet segmenter) and baselines, by name.

    from GTVAutoSegLib.models import NetConfig, build_network
    net = build_network(NetConfig("sanet", params={"use_sam": True}))
"""

from . import baselines, locator, resnet, sanet  # noqa: F401  (importing registers the networks)
from .registry import (
    DENSE_KINDS,
    SEGMENTER_KINDS,
    NetConfig,
    available_networks,
    build_network,
    count_parameters,
    default_params,
    network_kind,
    register,
    resolve_config,
)

__all__ = [
    "DENSE_KINDS",
    "SEGMENTER_KINDS",
    "NetConfig",
    "available_networks",
    "build_network",
    "count_parameters",
    "default_params",
    "network_kind",
    "register",
    "resolve_config",
]
