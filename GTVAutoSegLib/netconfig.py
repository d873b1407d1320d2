"""Which network to build and how: the config a model bundle stores as JSON.

Its own module, free of torch, so that a bundle's description can be read (and the ONNX Runtime
engine run) without importing torch; ``models.registry`` turns a config into a module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import GTVError


@dataclass
class NetConfig:
    """Which network to build and how.

    Args:
        name: a registered network name, see :func:`available_networks`.
        in_channels: input channels (1 for a CT slice).
        out_channels: logits per pixel for a segmenter, classes for a classifier.
        params: network-specific settings (see :func:`default_params`); must survive JSON, because
            the config is stored in the model bundle. Tuples become lists.
    """

    name: str
    in_channels: int = 1
    out_channels: int = 2
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise GTVError(f"network name must be a non-empty string, got {self.name!r}")
        for key in ("in_channels", "out_channels"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GTVError(f"network {key} must be a positive integer, got {value!r}")
        if not isinstance(self.params, dict):
            raise GTVError(f"network params must be a dict, got {type(self.params).__name__}")
        try:
            # A JSON round trip both checks and normalises (tuples -> lists, a private copy), so a
            # config read back from a bundle compares equal to the one that was saved.
            self.params = json.loads(json.dumps(self.params, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise GTVError(f"network params for {self.name!r} are not JSON-serialisable: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "params": json.loads(json.dumps(self.params)),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetConfig":
        """Inverse of :meth:`to_dict`; a malformed dict (e.g. from a damaged bundle) is a GTVError."""
        if not isinstance(data, dict):
            raise GTVError(f"network config must be a dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"name", "in_channels", "out_channels", "params"})
        if unknown:
            raise GTVError(f"network config has unknown keys: {', '.join(unknown)}")
        if "name" not in data:
            raise GTVError("network config has no 'name'")
        return cls(**data)
