"""Linear maps of spatial covariances: convolution, pooling, flattening, global pooling.

A kernel array has the layout ``(B1, *S, B2, *S)``: two batch axes (examples of ``x1`` and
``x2``; for the per-example "self" blocks ``B2 = 1``) each followed by the ``k`` spatial axes
of that example. With ``k = 0`` it is a plain ``B1 × B2`` matrix. Every function here acts on
the spatial axes only, the same way on ``nngp`` and ``ntk``:

- ``conv_mean``: ``out[s, s'] = mean_δ in[s·σ + δ − p, s'·σ + δ − p]`` over the filter offsets
  ``δ`` (the same offset on both sides: weights are shared), zero (SAME) or wrapped (CIRCULAR)
  outside, one spatial axis at a time (the mean over a box factorises);
- ``pool``: ``out = A in Aᵀ`` per spatial axis with the window-sum matrix ``A`` (divided by
  the window for averages; padded zeros count, ``normalize_edges=False``);
- ``flatten``: the mean over positions of ``in[s, s]`` (a dense layer after flatten sees each
  position's channels as separate features);
- ``global_pool``: the sum (or mean) over all pairs of positions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.kernels.shapes import window_geometry

Array = Any


def _axes(array: Array, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row and column spatial axes of a ``(B1, *S, B2, *S)`` array."""
    return tuple(range(1, 1 + k)), tuple(range(k + 2, 2 * k + 2))


def conv_mean(a: Array, k: int, filter_shape: tuple[int, ...], strides: tuple[int, ...], padding: str) -> Array:
    """The filter-mean of a spatial covariance (see module doc); a new array."""
    rows, cols = _axes(a, k)
    for axis in range(k):
        r, c = rows[axis], cols[axis]
        f, s = filter_shape[axis], strides[axis]
        size = a.shape[r]
        out, lo, hi = window_geometry(size, f, s, padding)
        if lo or hi:
            widths = [(0, 0)] * a.ndim
            widths[r] = widths[c] = (lo, hi)
            a = np.pad(a, widths, mode="wrap" if padding == "CIRCULAR" else "constant")
        total = None
        for d in range(f):
            index = [slice(None)] * a.ndim
            index[r] = index[c] = slice(d, d + s * (out - 1) + 1, s)
            part = a[tuple(index)]
            total = part.copy() if total is None else np.add(total, part, out=total)
        if f > 1:
            total *= a.dtype.type(1.0 / f)
        a = total
    return a


def pool_matrix(size: int, window: int, stride: int, padding: str, average: bool, dtype: Any) -> np.ndarray:
    """``A`` (out × size): ``A[t, s]`` = how often input ``s`` is in output ``t``'s window (÷ window)."""
    out, lo, _ = window_geometry(size, window, stride, padding)
    a = np.zeros((out, size), dtype=np.float64)
    for t in range(out):
        for w in range(window):
            src = t * stride + w - lo
            if padding == "CIRCULAR":
                a[t, src % size] += 1.0
            elif 0 <= src < size:
                a[t, src] += 1.0
    if average:
        a /= window
    return a.astype(dtype)


def _apply_along(a: Array, matrix: np.ndarray, axis: int) -> Array:
    return np.moveaxis(np.tensordot(a, matrix, axes=([axis], [1])), -1, axis)


def pool(a: Array, k: int, window: tuple[int, ...], strides: tuple[int, ...], padding: str, average: bool) -> Array:
    """``A in Aᵀ`` along every spatial axis (see module doc); a new array."""
    rows, cols = _axes(a, k)
    for axis in range(k):
        m = pool_matrix(a.shape[rows[axis]], window[axis], strides[axis], padding, average, a.dtype)
        a = _apply_along(_apply_along(a, m, rows[axis]), m, cols[axis])
    return np.ascontiguousarray(a)


def flatten(a: Array, k: int) -> Array:
    """``mean_s in[s, s]``: a ``B1 × B2`` array."""
    if k == 0:
        return a
    b1, b2 = a.shape[0], a.shape[k + 1]
    p = math.prod(a.shape[1 : k + 1])
    m = a.reshape(b1, p, b2, p)
    return np.einsum("isjs->ij", m) * a.dtype.type(1.0 / p)


def global_pool(a: Array, k: int, average: bool) -> Array:
    """``Σ_{s,s'} in[s, s']`` (÷ positions² for averages): a ``B1 × B2`` array."""
    rows, cols = _axes(a, k)
    out = a.sum(axis=rows + cols)
    if average:
        p = math.prod(a.shape[1 : k + 1])
        out *= a.dtype.type(1.0 / (p * p))
    return out
