"""Classic kernels on blocks of rows: linear, polynomial, RBF, Laplace.

- linear ``<x, x'>``; polynomial ``(c + <x, x'>)^degree``;
- rbf ``exp(−‖x − x'‖²/(2ℓ²))``; laplace ``exp(−‖x − x'‖/ℓ)``.

Squared distances use one matrix product, ``‖x‖² + ‖x'‖² − 2<x, x'>``, clipped at 0 (exactly
0 on the diagonal of a symmetric block). Where that expansion has lost more than about half
the digits (``d² < √eps·(‖x‖² + ‖x'‖²)``: near-duplicate points) the distance is recomputed
directly from the differences, so duplicates give exactly 1 and close pairs keep their
relative accuracy (this matters for Laplace, whose square root would amplify the error).
Vectorised with the array module of the inputs (NumPy or CuPy); in-place on the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.backend import array_namespace
from core.kernels.spec import RBF, KernelSpec, Laplace, Linear, Polynomial

Array = Any

#: Elements of one temporary used to recompute near-duplicate distances.
_REFINE_ELEMENTS = 1 << 20


def _inner(x1: Array, x2: Array | None) -> Array:
    """``x1 @ x2.T`` (``x2 is None``: ``x1 @ x1.T``, a symmetric rank-k update)."""
    return x1 @ (x1 if x2 is None else x2).T


def squared_distances(x1: Array, x2: Array | None) -> Array:
    """``‖x_i − x'_j‖²`` (``x2 is None``: within ``x1``), non-negative, refined near 0."""
    xp = array_namespace(x1)
    sym = x2 is None
    y = x1 if sym else x2
    n1 = xp.einsum("ij,ij->i", x1, x1)
    n2 = n1 if sym else xp.einsum("ij,ij->i", y, y)
    out = _inner(x1, x2)
    out *= -2
    step = max(1, _REFINE_ELEMENTS // max(1, out.shape[1]))
    for r0 in range(0, out.shape[0], step):  # n_i + n_j first: exactly symmetric when sym
        out[r0 : r0 + step] += n1[r0 : r0 + step, None] + n2[None, :]
    xp.maximum(out, 0, out=out)
    if sym:
        idx = xp.arange(x1.shape[0])
        out[idx, idx] = 0
    tol = float(np.sqrt(np.finfo(out.dtype).eps))
    rows, cols = xp.nonzero(out < tol * (n1[:, None] + n2[None, :]))
    step = max(1, _REFINE_ELEMENTS // x1.shape[1])
    for s in range(0, int(rows.shape[0]), step):
        r, c = rows[s : s + step], cols[s : s + step]
        diff = x1[r] - y[c]
        out[r, c] = xp.einsum("ij,ij->i", diff, diff)
    return out


def _inverse(lengthscale: float, dtype: Any) -> float:
    """``1/ℓ`` capped at the dtype's largest finite value (so 0·(1/ℓ) is never NaN)."""
    ell = float(lengthscale)
    return min(1.0 / ell, float(np.finfo(dtype).max)) if ell > 0 else float(np.finfo(dtype).max)


def classic_block(spec: KernelSpec, x1: Array, x2: Array | None) -> Array:
    """The kernel matrix of ``spec`` for rows ``x1`` against ``x2`` (``None``: ``x1``)."""
    xp = array_namespace(x1)
    if isinstance(spec, Linear):
        return _inner(x1, x2)
    if isinstance(spec, Polynomial):
        out = _inner(x1, x2)
        out += spec.c
        xp.power(out, spec.degree, out=out)
        return out
    if isinstance(spec, RBF):
        out = squared_distances(x1, x2)
        inv = _inverse(spec.lengthscale, out.dtype)
        with np.errstate(over="ignore"):  # tiny ℓ: −inf, then exp → 0 (intended)
            out *= -0.5 * inv  # two separate factors: no overflow of 1/ℓ² for tiny ℓ
            out *= inv
        xp.exp(out, out=out)
        return out
    if isinstance(spec, Laplace):
        out = squared_distances(x1, x2)
        xp.sqrt(out, out=out)
        with np.errstate(over="ignore"):
            out *= -_inverse(spec.lengthscale, out.dtype)
        xp.exp(out, out=out)
        return out
    raise ValueError(f"not a classic kernel: {spec!r}")
