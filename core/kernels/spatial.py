"""Linear maps of spatial covariances: convolution, pooling, flattening, global pooling.

A kernel array has the layout ``(B1, *S, B2, *S)``: two batch axes (examples of ``x1`` and
``x2``; for the per-example "self" blocks ``B2 = 1``) each followed by the ``k`` spatial axes
of that example. With ``k = 0`` it is a plain ``B1 × B2`` matrix. Every function here acts on
the spatial axes only, the same way on ``nngp`` and ``ntk``:

- ``conv_mean``: ``out[s, s'] = mean_δ in[s·σ + δ − p, s'·σ + δ − p]`` over the filter offsets
  ``δ`` (the same offset on both sides: weights are shared), zero (SAME) or wrapped (CIRCULAR)
  outside, one spatial axis at a time (the mean over a box factorises);
- ``pool``: ``out = A in Aᵀ`` per spatial axis with the window-sum matrix ``A`` (window sums
  on the row and column axes separately; ÷ window for averages; padded zeros count,
  ``normalize_edges=False``);
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


def _padded(a: Array, axes: tuple[int, ...], lo: int, hi: int, padding: str) -> Array:
    if not (lo or hi):
        return a
    widths = [(0, 0)] * a.ndim
    for axis in axes:
        widths[axis] = (lo, hi)
    return np.pad(a, widths, mode="wrap" if padding == "CIRCULAR" else "constant")


def _window_sum(a: Array, axes: tuple[int, ...], window: int, stride: int, out: int, lo: int = 0,
                padding: str = "VALID") -> Array:
    """``Σ_δ a[..., t·stride + δ − lo, ...]`` with the same offset ``δ`` on every axis of ``axes``:
    zero outside (VALID, SAME) or wrapped around (CIRCULAR, by a padded copy)."""
    if padding == "CIRCULAR":
        hi = max((out - 1) * stride + window - a.shape[axes[0]] - lo, 0)
        a, lo, padding = _padded(a, axes, lo, hi, padding), 0, "VALID"
    size = a.shape[axes[0]]
    shape = list(a.shape)
    for axis in axes:
        shape[axis] = out
    # start from an offset that covers every output (a copy), else from zeros
    full = [d for d in range(window) if d >= lo and (out - 1) * stride + d - lo <= size - 1]
    total = None
    if full:
        index = [slice(None)] * a.ndim
        for axis in axes:
            index[axis] = slice(full[0] - lo, full[0] - lo + stride * (out - 1) + 1, stride)
        total = a[tuple(index)].copy()
    else:
        total = np.zeros(shape, a.dtype)
    for d in range(window):
        if full and d == full[0]:
            continue
        first = max(0, -((d - lo) // stride))  # smallest t with t·stride + d − lo ≥ 0
        last = min(out - 1, (size - 1 - d + lo) // stride)
        if last < first:
            continue
        src = slice(first * stride + d - lo, last * stride + d - lo + 1, stride)
        dst = slice(first, last + 1)
        target = [slice(None)] * a.ndim
        source = [slice(None)] * a.ndim
        for axis in axes:
            target[axis], source[axis] = dst, src
        view = total[tuple(target)]
        np.add(view, a[tuple(source)], out=view)
    return total


def conv_mean(a: Array, k: int, filter_shape: tuple[int, ...], strides: tuple[int, ...], padding: str) -> Array:
    """The filter-mean of a spatial covariance (see module doc); a new array."""
    rows, cols = _axes(a, k)
    for axis in range(k):
        f, s = filter_shape[axis], strides[axis]
        out, lo, hi = window_geometry(a.shape[rows[axis]], f, s, padding)
        pair = (rows[axis], cols[axis])
        a = _window_sum(a, pair, f, s, out, lo, padding)
        if f > 1:
            a *= a.dtype.type(1.0 / f)
    return a


def pool(a: Array, k: int, window: tuple[int, ...], strides: tuple[int, ...], padding: str, average: bool) -> Array:
    """``A in Aᵀ`` along every spatial axis, i.e. window sums on the row and the column axes
    independently (÷ window² for averages); a new array."""
    rows, cols = _axes(a, k)
    scale = 1.0
    for axis in range(k):
        f, s = window[axis], strides[axis]
        out, lo, hi = window_geometry(a.shape[rows[axis]], f, s, padding)
        for side in (rows[axis], cols[axis]):
            if f == s and not (lo or hi) and a.shape[side] == f * out:  # disjoint windows: a reshape
                shape = a.shape[:side] + (out, f) + a.shape[side + 1 :]
                a = a.reshape(shape).sum(axis=side + 1)
            else:
                a = _window_sum(a, (side,), f, s, out, lo, padding)
        scale *= f * f
    if average:
        a *= a.dtype.type(1.0 / scale)
    return a


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




def patches(x: Array, filter_shape: tuple[int, ...], strides: tuple[int, ...], padding: str) -> Array:
    """``(n, *S_out, f·C)``: each output position's receptive field of ``x`` (``(n, *S, C)``), zero
    (SAME) or wrapped (CIRCULAR) outside, offsets major and channels minor."""
    k = x.ndim - 2
    geometry = [window_geometry(x.shape[1 + a], filter_shape[a], strides[a], padding) for a in range(k)]
    widths = [(0, 0)] + [(lo, hi) for _, lo, hi in geometry] + [(0, 0)]
    xp = np.pad(x, widths, mode="wrap" if padding == "CIRCULAR" else "constant")
    parts = []
    for offset in np.ndindex(*filter_shape):
        index = [slice(None)] + [slice(d, d + s * (out - 1) + 1, s)
                                 for d, s, (out, _, _) in zip(offset, strides, geometry)] + [slice(None)]
        parts.append(xp[tuple(index)])
    return np.concatenate(parts, axis=-1)
