"""Device chosen once: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (one GPU of several) or ``mps`` (Apple).

The names are checked here without torch (the Slicer module and the batch script check them
before any inference process starts); only :func:`resolve_device` and :func:`available_devices`
import torch.
"""

from __future__ import annotations

import os
import re

from .errors import GTVError

# "auto" takes the CUDA GPU when torch sees one, else the CPU. It never picks "mps": some of the
# networks' operations (adaptive pooling on sizes that do not divide) are not supported there.
DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DEVICE_HELP = f"{', '.join(DEVICE_NAMES[:-1])} or {DEVICE_NAMES[-1]} (default auto)"  # for --device
# The networks' arithmetic: auto is bf16 autocast on CUDA and fp32 on the CPU. bf16 on this project's
# CPU (Xeon, avx512_bf16 without AMX; model 0.2.0, the 33 OpenKBP validation CTs): networks 1.4x
# faster, Dice 0.5485 against 0.5483 in fp32, 552 of 231,311 mask voxels different. A CPU without
# native bf16 emulates it, slower.
PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_HELP = ("the networks' arithmetic: auto (bf16 on CUDA, fp32 on the CPU), fp32, or bf16 (on a CPU with "
                  "native bf16 about 1.4x faster networks; a few voxels differ) (default auto)")
# What runs the networks (``onnxnets.py``); here so that the CLI names them without importing numpy.
ENGINES = ("auto", "torch", "onnx")
ENGINE_HELP = ("what runs the networks: onnx (ONNX Runtime on the CPU; a cold call does not import torch; the model is "
               "exported once into the user cache), torch, or auto (onnx for an fp32 run on the CPU when onnxruntime "
               "is installed and the model is a listed one or exported before, else torch) (default auto)")
_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def check_device_name(name: str | None) -> str:
    """The device name, lower-cased (``gpu`` is ``cuda``); ``GTVError`` if it is none of
    :data:`DEVICE_NAMES`."""
    normalised = (name or "auto").strip().lower()
    if normalised == "gpu":
        normalised = "cuda"
    if not _PATTERN.fullmatch(normalised):
        raise GTVError(f"unknown device '{name}'; use {', '.join(DEVICE_NAMES)}")
    return normalised


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for a checked name.

    Raises:
        GTVError: the device is not available to this torch (no CUDA, fewer GPUs, no MPS).
    """
    import torch

    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GTVError(f"device '{name}' was asked for but no CUDA GPU is available to torch; use --device cpu")
        count = torch.cuda.device_count()
        index = int(name.partition(":")[2] or 0)
        if index >= count:
            raise GTVError(f"device '{name}' was asked for but torch sees {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise GTVError("device 'mps' was asked for but this torch has no Apple MPS backend available; use --device cpu")
        return torch.device("mps")
    return torch.device("cpu")


def available_devices() -> list[tuple[str, str]]:
    """``(name, label)`` for every device this torch can run on, ``auto`` and ``cpu`` first."""
    import torch

    devices = [("auto", "Auto (CUDA GPU if any, else CPU)"), ("cpu", "CPU")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            devices.append((f"cuda:{i}", f"GPU {i}: {torch.cuda.get_device_name(i)}"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(("mps", "Apple GPU (MPS)"))
    return devices


# OpenBLAS's idle threads spin for 2**N cycles (N = 28 by default: about 0.1 s) before they sleep.
# numpy's matrix products (the ONNX engine's resizes) leave one spinning on the second core while
# ONNX Runtime's two threads run the locator right after: on this project's 2-core machine the
# locator took 67-75 ms after a resize instead of 58 ms. 2**16 cycles (tens of microseconds) still
# covers the gap between the products of one resize (which kept their speed) and gave the 58 ms back.
OPENBLAS_THREAD_TIMEOUT = "16"


def passive_cpu_threads() -> None:
    """Idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the
    user set a policy. Call before torch or numpy is imported: OpenMP reads it once, when it is loaded.

    Why: on a CPU that other programs share (a workstation, a cluster node, this project's
    machines), a spinning thread waits on a sibling the OS has descheduled at every parallel
    region. Measured on this project's 2-core machine with other jobs taking ~1/3 of it: 8 OpenKBP
    CTs through ``gtvautoseg batch`` in 21.1-26.2 s with the default policy, 8.2-8.8 s passive, the
    same as with one thread; the arithmetic, and so every output, is unchanged.

    The same for numpy's OpenBLAS (``OPENBLAS_THREAD_TIMEOUT``, read when numpy loads it; see
    ``OPENBLAS_THREAD_TIMEOUT`` above), unless the user set a timeout.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not any(os.environ.get(k) for k in ("OPENBLAS_THREAD_TIMEOUT", "GOTO_THREAD_TIMEOUT")):
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_THREAD_TIMEOUT
