"""A torch module as a net of the cascade: numpy batch in, class-1 probabilities out.

The cascade (``cascade.py``) does not import torch; this is where a torch network meets it: the
module moved to its device once, in the memory format oneDNN and cuDNN like, run under
``inference_mode`` and, with precision ``bf16``, under autocast.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch


def split_output(out) -> tuple:
    """A segmenter's output as ``(segmentation logits, slice logits or None)``: a multi-task
    segmenter (``sanet_mtl``) returns both, every other the segmentation alone."""
    return (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)


class TorchNet:
    """Args:
        net: a 2D (``dims=2``: ``(B, C, H, W)``) or 3D (``dims=3``: ``(B, C, D, H, W)``) network
            returning logits with classes on axis 1 (or a tuple whose first item is those).
        device: ``torch.device`` (None: the CPU).
        precision: ``fp32`` or ``bf16`` (autocast on the device), as the cascade resolved it.
    """

    def __init__(self, net: torch.nn.Module, device, precision: str, dims: int):
        self.device = device if device is not None else torch.device("cpu")
        # channels_last pays on oneDNN and cuDNN alike for these convolutional nets
        self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        self.net = net.to(self.device, memory_format=self.memory_format).eval()
        self.precision = precision

    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @torch.inference_mode()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``x`` float32 ``(B, C, ...)`` -> ``(B, ...)`` float32 softmax probability of class 1."""
        t = torch.from_numpy(x).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self._autocast():
            p = torch.softmax(split_output(self.net(t))[0].float(), dim=1)[:, 1]
        return p.cpu().numpy()
