"""Device chosen once, from "auto" / "cpu" / "cuda" (or "cuda:N")."""

from __future__ import annotations

import torch

from .errors import GTVError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GTVError("device 'cuda' was asked for but no CUDA GPU is available to torch; use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise GTVError(f"unknown device '{name}'; use auto, cpu or cuda")
