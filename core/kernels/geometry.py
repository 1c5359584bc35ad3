"""Scale-safe geometry of a pair of centred Gaussian variables ``(u, v)``.

With ``q11 = E[u²]``, ``q22 = E[v²]``, ``q12 = E[uv]``:

- ``s12 = sqrt(q11 q22)`` is formed as ``sqrt(m1 m2)·p1·p2`` where ``q = m·p²``,
  ``m ∈ [0.5, 2)`` and ``p`` a power of two (``split_scale``). It never overflows or
  underflows for finite inputs (``q`` near 1e±300 is fine) and is *exact* when
  ``q11 == q22`` (``sqrt(fl(m·m)) == m``), so a point has correlation exactly 1 with itself.
- ``ρ = q12 / s12`` clipped to ``[-1, 1]``; ``ρ = 0`` when ``s12 == 0`` (a zero-norm input
  is orthogonal to everything: angle π/2, never NaN).
- ``θ = arctan2(sqrt(max((1 − ρ)(1 + ρ), 0)), ρ)``, i.e. exactly
  ``arctan2(sqrt(max(q11 q22 − q12², 0)), q12)`` with both arguments divided by ``s12``.

For the piecewise-linear activations the angle is taken from the *scaled* pair
(``scaled_pair``): ``x̂ = q12/(p1 p2)`` (exact: powers of two), ``D̂ = sqrt(max(m1 m2 − x̂², 0))``
and ``θ = arctan2(D̂, x̂)``, so ``cos θ = x̂/ŝ``, ``sin θ = D̂/ŝ`` with ``ŝ = sqrt(m1 m2)`` and every
quantity O(1) (no overflow of ``q11 q22`` at 1e±150 inputs). For a point with itself
``x̂ = m1 = m2`` and ``D̂ = fl(m·m) − fl(m·m) = 0`` exactly; no division, one square root.

All functions broadcast and use only operations NumPy and CuPy share.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.backend import array_namespace

Array = Any


def split_scale(q: Array) -> tuple[Array, Array]:
    """``q = m·p²`` with ``m ∈ [0.5, 2)`` (0 for ``q = 0``) and ``p`` a power of two (1 for 0)."""
    xp = array_namespace(q)
    mant, e = xp.frexp(q)
    odd = (e & 1) == 1
    mant = xp.where(odd, mant * 2, mant)
    e = xp.where(odd, e - 1, e)
    p = xp.ldexp(xp.ones_like(q), e // 2)
    return mant.astype(q.dtype, copy=False), p.astype(q.dtype, copy=False)


def scaled_pair(q12: Array, m1: Array, ip1: Array, m2: Array, ip2: Array) -> tuple[Array, Array, Array, Array]:
    """``(x̂, D̂, θ)`` of the scaled pair (module doc); ``ip = 1/p``.

    ``θ = arctan2(max(D̂, tiny), x̂)`` with ``tiny`` the dtype's smallest normal number: this
    is ``arctan2(D̂, x̂)`` to the last bit except that a zero-norm point (``x̂ = D̂ = 0``) gets
    ``θ = π/2`` instead of ``arctan2(0, 0)``.
    """
    xp = array_namespace(q12, m1, m2)
    xh = q12 * ip1 * ip2
    dh = xp.sqrt(xp.maximum(m1 * m2 - xh * xh, 0))
    theta = xp.arctan2(xp.maximum(dh, np.finfo(dh.dtype).tiny), xh)
    return xh, dh, theta


def norm_product(m1: Array, p1: Array, m2: Array, p2: Array) -> Array:
    """``sqrt(q11 q22)`` from the ``split_scale`` parts (broadcasting)."""
    xp = array_namespace(m1, m2)
    return xp.sqrt(m1 * m2) * p1 * p2


def correlation(q12: Array, s12: Array) -> Array:
    """``ρ = q12 / s12`` clipped to ``[-1, 1]``; 0 where ``s12 == 0``."""
    xp = array_namespace(q12, s12)
    positive = s12 > 0
    rho = xp.where(positive, q12 / xp.where(positive, s12, 1), 0)
    return xp.clip(rho, -1, 1).astype(q12.dtype, copy=False)


def row_sq_norms(x: Array) -> Array:
    """``‖x_i‖²`` for each row, in ``x``'s dtype."""
    xp = array_namespace(x)
    return xp.einsum("ij,ij->i", x, x)
