"""Resizing stacks of images without torch: the resamplings of ``torch.nn.functional.interpolate``
the inference path uses, one axis at a time: each output pixel a weighted sum of a few input pixels,
applied as a matrix product.

- ``linear`` with antialias (``mode="bilinear", antialias=True``): a triangle filter as wide as the
  scale when shrinking (every input pixel counts), plain bilinear when enlarging;
- ``linear`` without antialias (``mode="trilinear"`` / ``"bilinear"``, ``align_corners=False``);
- ``nearest`` (``mode="nearest-exact"``).

Equal to torch's up to float32 rounding (the sums run in another order); the tests bound the
difference. The ONNX Runtime engine (``onnxnets.py``) resizes with these, so it never imports torch.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _taps(n_in: int, n_out: int, mode: str, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel ``i`` along one axis is ``sum_k weight[i, k] * input[index[i, k]]``:
    ``(n_out, K)`` int64 indices and float32 weights (rows padded with weight 0)."""
    scale = n_in / n_out
    rows: list[tuple[list[int], list[float]]] = []
    for i in range(n_out):
        centre = scale * (i + 0.5)
        if mode == "nearest":  # as torch computes it: a float32 scale, the product rounded to float32
            src = np.float32((i + 0.5) * float(np.float32(n_in) / np.float32(n_out)))
            rows.append(([min(int(np.floor(src)), n_in - 1)], [1.0]))
        elif antialias:
            support = max(scale, 1.0)  # the triangle's half-width, in input pixels
            lo = max(int(centre - support + 0.5), 0)
            hi = min(int(centre + support + 0.5), n_in)
            j = np.arange(lo, hi)
            w = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - centre) / support))
            keep = w > 0
            rows.append((j[keep].tolist(), (w[keep] / w.sum()).tolist()))
        else:
            src = max(centre - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            frac = src - i0
            rows.append(([i0, i1], [1.0 - frac, frac]) if i1 != i0 else ([i0], [1.0]))
    k = max(len(cols) for cols, _ in rows)
    index = np.zeros((n_out, k), np.int64)
    weight = np.zeros((n_out, k), np.float32)
    for i, (cols, vals) in enumerate(rows):
        index[i, :len(cols)], weight[i, :len(vals)] = cols, vals
        index[i, len(cols):] = cols[-1]
    return index, weight


def _along(array: np.ndarray, axis: int, taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Resample ``array`` along ``axis``: a weighted sum of a few gathered input slabs per tap."""
    index, weight = taps
    shape = [1] * array.ndim
    shape[axis] = index.shape[0]
    size = list(array.shape)
    size[axis] = index.shape[0]
    out = np.empty(size, np.float32)
    term = np.empty(size, np.float32)  # one buffer for every tap (fresh memory is costly)
    for k in range(index.shape[1]):
        np.take(array, index[:, k], axis=axis, out=term if k else out)
        if k:
            term *= weight[:, k].reshape(shape)
            out += term
        else:
            out *= weight[:, 0].reshape(shape)
    return out


@lru_cache(maxsize=64)
def _matrix(n_in: int, n_out: int, mode: str, antialias: bool) -> np.ndarray:
    """:func:`_taps` as a dense ``(n_out, n_in)`` float32 matrix."""
    index, weight = _taps(n_in, n_out, mode, antialias)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.repeat(np.arange(n_out), index.shape[1]), index.ravel()), weight.ravel())
    return m


def _along_matmul(array: np.ndarray, axis: int, m: np.ndarray) -> np.ndarray:
    """Resample ``array`` along ``axis`` as one (batched) matrix product: multithreaded BLAS, which
    beats the tap sums 3-7x (and torch's kernels) although it multiplies the zeros too."""
    shape = array.shape
    if axis == array.ndim - 1:
        return (array.reshape(-1, shape[-1]) @ m.T).reshape(*shape[:-1], m.shape[0])
    lead, rest = int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis + 1:], dtype=np.int64))
    return np.matmul(m, array.reshape(lead, shape[axis], rest)).reshape(*shape[:axis], m.shape[0], *shape[axis + 1:])


def resize(array: np.ndarray, shape: tuple[int, ...], mode: str = "linear", antialias: bool = True,
           pad: tuple[tuple[int, int], ...] | None = None) -> np.ndarray:
    """Resize the last ``len(shape)`` axes of ``array`` to ``shape``; float32 out.

    ``mode``: ``linear`` (with or without ``antialias``; finite input: a product with the zero
    weights would spread an infinity) or ``nearest`` (exact: values are copied, never multiplied).
    ``pad``: ``(before, after)`` per resized axis (``linear`` only): resize ``array`` as if it were
    zero-padded so, without building the padded array (the padding's columns of each axis's matrix
    are left out: they would multiply zeros).
    The axis that shrinks most goes first, so later products have less to do.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    out = np.asarray(array, dtype=np.float32)
    first = out.ndim - len(shape)
    pad = tuple(pad) if pad is not None else ((0, 0),) * len(shape)
    if len(pad) != len(shape) or (mode == "nearest" and any(any(p) for p in pad)):
        raise ValueError(f"pad must give (before, after) for each of {len(shape)} axes, linear mode only; got {pad}")
    padded = [out.shape[first + k] + sum(pad[k]) for k in range(len(shape))]
    for k in sorted(range(len(shape)), key=lambda k: int(shape[k]) / max(padded[k], 1)):
        axis, n, (before, after) = first + k, int(shape[k]), pad[k]
        if padded[k] == n and not before and not after:
            continue
        if mode == "nearest":
            out = _along(out, axis, _taps(out.shape[axis], n, mode, antialias))
        else:
            m = _matrix(padded[k], n, mode, antialias)
            out = _along_matmul(out, axis, m[:, before:padded[k] - after] if before or after else m)
    return np.ascontiguousarray(out)
