"""Networks by name: a config dataclass, a registry of builders, and a parameter counter.

A model bundle stores a :class:`NetConfig` as JSON; :func:`build_network` turns it back into a
module. Every registered network declares its kind ("classifier", "segmenter", "segmenter3d" or "locator3d") and the params it
takes with their defaults, so a config from a bundle is checked before anything is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import GTVError
from ..netconfig import NetConfig

KINDS = ("classifier", "segmenter", "segmenter3d", "locator3d")
SEGMENTER_KINDS = ("segmenter", "segmenter3d")  # what the cascade's segmenter slot takes
DENSE_KINDS = (*SEGMENTER_KINDS, "locator3d")  # per-voxel logits, trained with a segmentation loss

Builder = Callable[[NetConfig], Any]  # -> torch.nn.Module


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    kind: str
    defaults: dict[str, Any]


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, *, kind: str, params: dict[str, Any] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(cfg) -> nn.Module`` under ``name``.

    Args:
        name: the name a :class:`NetConfig` uses.
        kind: "classifier" (``(B, C, H, W) -> (B, K)``), "segmenter" (``(B, C, H, W) -> (B, K, H, W)``)
            or "segmenter3d" (``(B, C, D, H, W) -> (B, K, D, H, W)``, run on stacks of
            ``params["patch_depth"]`` model-space slices), or "locator3d" (the same shapes, run
            once on the whole model-space stack resized to the bundle's ``CoarseSpec``).
        params: every param the network takes, with its default. :func:`build_network` passes the
            builder a config whose ``params`` hold all of them (defaults filled in).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    defaults = json.loads(json.dumps(params or {}))

    def decorator(builder: Builder) -> Builder:
        old = _REGISTRY.get(name)
        # Re-registering the same builder happens when Slicer reloads the module; a different
        # builder under a taken name is a programming error.
        if old is not None and _qualname(old.builder) != _qualname(builder):
            raise ValueError(f"network {name!r} is already registered by {_qualname(old.builder)}")
        _REGISTRY[name] = _Entry(builder, kind, defaults)
        return builder

    return decorator


def _qualname(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise GTVError(f"unknown network {name!r}; known: {', '.join(available_networks())}") from None


def available_networks(kind: str | None = None) -> list[str]:
    """Registered names, sorted; only those of ``kind`` when given."""
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def network_kind(name: str) -> str:
    """"classifier", "segmenter", "segmenter3d" or "locator3d"."""
    return _entry(name).kind


def default_params(name: str) -> dict[str, Any]:
    """The params ``name`` takes, with their defaults (a copy)."""
    return json.loads(json.dumps(_entry(name).defaults))


def resolve_config(cfg: NetConfig) -> NetConfig:
    """``cfg`` with every param spelled out (defaults filled in), after checking names and types."""
    entry = _entry(cfg.name)
    unknown = sorted(set(cfg.params) - set(entry.defaults))
    if unknown:
        takes = ", ".join(sorted(entry.defaults)) or "no params"
        raise GTVError(f"network {cfg.name!r} has no param {', '.join(map(repr, unknown))}; it takes: {takes}")
    for key, value in cfg.params.items():
        if not _same_type(entry.defaults[key], value):
            raise GTVError(
                f"network {cfg.name!r} param {key!r} must be {type(entry.defaults[key]).__name__}, got {value!r}"
            )
    return NetConfig(cfg.name, cfg.in_channels, cfg.out_channels, {**entry.defaults, **cfg.params})


def _same_type(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def build_network(cfg: NetConfig):
    """Build the network ``cfg`` names, in training mode with fresh weights.

    Raises:
        GTVError: unknown name, unknown param, a param of the wrong type, or values the network
            rejects (e.g. a ``strides`` list that does not fit ``channels``).
    """
    full = resolve_config(cfg)
    try:
        return _entry(cfg.name).builder(full)
    except (TypeError, ValueError) as exc:
        raise GTVError(f"cannot build network {cfg.name!r} with params {full.params}: {exc}") from exc


def count_parameters(module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
