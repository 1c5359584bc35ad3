"""Activations without a closed form: 2-D Gauss–Hermite quadrature.

``E[φ(u)φ(v)]`` and ``E[φ'(u)φ'(v)]`` for ``(u, v)`` centred Gaussian with variances
``q11, q22`` and covariance ``q12`` are computed with ``u = s1 z1``,
``v = s2 (ρ z1 + √(1−ρ²) z2)``, ``z1, z2`` iid N(0, 1), and a tensor-product
Gauss–Hermite rule of N (probabilists') nodes per dimension: N² evaluations of φ per entry.
Gauss–Hermite converges more slowly as φ(√q z) sharpens, so N grows with the entry's
larger variance ``max(q11, q22)`` (``LEVELS``): 32 nodes up to 1, 48 up to 2, 64 up to 3,
96 up to 6, 128 beyond (up to 16× the work of the base rule). The rule depends only on the
entry, never on the tile it is computed in. Diagonals use the same rule at ``ρ = 1``.

Measured accuracy against 2-D adaptive ``scipy`` integration (``q11 = q``, ``q22 = 0.8 q``,
``ρ ∈ {−0.9, 0, 0.5, 0.99}``), max absolute error of ``E[φφ]`` / ``E[φ'φ']``;
``tests/core/test_kernels_quadrature.py`` re-checks a subset:

==========  ===============  ===============  ===============  ===============
φ           q ≤ 1            q ≤ 4            q ≤ 9            q ≤ 16
==========  ===============  ===============  ===============  ===============
tanh        1e-6 / 2e-5      4e-6 / 7e-5      3e-5 / 3e-4      3e-4 / 2e-3
sigmoid     3e-13 / 4e-12    3e-12 / 3e-11    2e-10 / 2e-9     5e-8 / 2e-7
softplus    2e-14 / 3e-13    2e-13 / 3e-12    3e-11 / 2e-10    1e-8 / 5e-8
swish       3e-12 / 4e-11    3e-11 / 3e-10    2e-9 / 2e-8      4e-7 / 2e-6
==========  ===============  ===============  ===============  ===============

Beyond q ≈ 16 the error keeps growing (the node count is capped): keep pre-activation
variances O(1), the usual regime, when accuracy matters. Non-smooth functions converge
slowly: the same rule on relu (a kink) is off by up to a few percent, on erf by ~1e-4
(``test_kernels_quadrature.py`` compares both with their closed forms). Values stay finite
for any finite input.

Vectorised NumPy/CuPy code (``array_namespace``), chunked so that temporaries stay below
``CHUNK_ELEMENTS`` elements regardless of the block size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from core.backend import array_namespace
from core.kernels.geometry import correlation, norm_product, split_scale
from core.kernels.spec import Activation
from core.kernels.state import KernelState

Array = Any
Fn = Callable[[Array], Array]

#: Gauss–Hermite nodes per dimension of the base rule (variances ≤ 1).
NODES = 32
#: Upper bound on the elements of one quadrature temporary (rows × cols × NODES).
CHUNK_ELEMENTS = 1 << 21


def _sigmoid(x: Array) -> Array:
    xp = array_namespace(x)
    return 0.5 * (1 + xp.tanh(0.5 * x))  # no overflow for any finite x


def _tanh(x: Array) -> Array:
    return array_namespace(x).tanh(x)


def _dtanh(x: Array) -> Array:
    t = array_namespace(x).tanh(x)
    return 1 - t * t


def _dsigmoid(x: Array) -> Array:
    s = _sigmoid(x)
    return s * (1 - s)


def _softplus(x: Array) -> Array:
    return array_namespace(x).logaddexp(0, x)


def _swish(x: Array) -> Array:
    return x * _sigmoid(x)


def _dswish(x: Array) -> Array:
    s = _sigmoid(x)
    return s + x * s * (1 - s)


#: name → (φ, φ'). All are finite for every finite argument.
FUNCTIONS: dict[str, tuple[Fn, Fn]] = {
    "tanh": (_tanh, _dtanh),
    "sigmoid": (_sigmoid, _dsigmoid),
    "softplus": (_softplus, _sigmoid),
    "swish": (_swish, _dswish),
}


#: Node-count levels: an entry uses the first level whose bound is ≥ max(q11, q22), so the
#: rule depends only on the entry itself (never on the tile it is computed in).
LEVELS: tuple[tuple[float, int], ...] = ((1.0, 32), (2.0, 48), (3.0, 64), (6.0, 96), (math.inf, 128))


def gauss_hermite(nodes: int = NODES) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to sum to 1 (N(0,1) rule)."""
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    return z, w / w.sum()


def gaussian_pair(
    phi: Fn,
    dphi: Fn | None,
    q1: Array,
    q2: Array,
    q12: Array,
    nodes: int = NODES,
) -> tuple[Array, Array | None]:
    """``(E[φ(u)φ(v)], E[φ'(u)φ'(v)])`` by a fixed ``nodes``-point rule; inputs broadcast.

    ``dphi=None`` skips the derivative kernel.
    """
    xp = array_namespace(q12)
    dtype = q12.dtype
    z_np, w_np = gauss_hermite(nodes)
    z = xp.asarray(z_np, dtype=dtype)
    w = xp.asarray(w_np, dtype=dtype)
    m1, p1 = split_scale(q1)
    m2, p2 = split_scale(q2)
    s12 = norm_product(m1, p1, m2, p2)
    rho = correlation(q12, s12)
    sig = xp.sqrt(xp.maximum((1 - rho) * (1 + rho), 0))
    s1 = xp.sqrt(q1)
    s2 = xp.sqrt(q2)
    shape = np.broadcast_shapes(q1.shape, q2.shape, q12.shape)
    rho = xp.broadcast_to(rho, shape)[..., None]
    sig = xp.broadcast_to(sig, shape)[..., None]
    s2b = xp.broadcast_to(s2, shape)[..., None]
    out = xp.zeros(shape, dtype=dtype)
    dout = xp.zeros(shape, dtype=dtype) if dphi is not None else None
    for a in range(nodes):
        u = s1 * z[a]
        v = s2b * (rho * z[a] + sig * z)  # shape + (nodes,): all second-coordinate nodes
        out += w[a] * (phi(u) * (phi(v) @ w))
        if dout is not None:
            dout += w[a] * (dphi(u) * (dphi(v) @ w))
    return out, dout


def node_levels(q: Array) -> Array:
    """Index into ``LEVELS`` for each variance."""
    xp = array_namespace(q)
    bounds = xp.asarray([b for b, _ in LEVELS[:-1]], dtype=q.dtype)
    return xp.searchsorted(bounds, q, side="left")


def pair_matrix(
    phi: Fn, dphi: Fn | None, q1: Array, q2: Array, q12: Array
) -> tuple[Array, Array | None]:
    """Adaptive rule for a block: rows ``q1`` (n1,), columns ``q2`` (n2,), ``q12`` (n1, n2).

    Entries are grouped by level (``LEVELS``) and each group is evaluated in row chunks that
    keep temporaries below ``CHUNK_ELEMENTS``.
    """
    xp = array_namespace(q12)
    lv1, lv2 = node_levels(q1), node_levels(q2)
    out = xp.empty_like(q12)
    dout = xp.empty_like(q12) if dphi is not None else None
    for level, (_, nodes) in enumerate(LEVELS):
        rows = xp.nonzero(lv1 <= level)[0]
        cols = xp.nonzero(lv2 <= level)[0]
        # entries whose larger level is exactly ``level``
        for r_sel, c_sel in ((rows[lv1[rows] == level], cols), (rows[lv1[rows] < level], cols[lv2[cols] == level])):
            if r_sel.shape[0] == 0 or c_sel.shape[0] == 0:
                continue
            step = max(1, CHUNK_ELEMENTS // (int(c_sel.shape[0]) * nodes))
            for s in range(0, int(r_sel.shape[0]), step):
                r = r_sel[s : s + step]
                block = xp.ix_(r, c_sel)
                new, dot = gaussian_pair(phi, dphi, q1[r][:, None], q2[c_sel][None, :], q12[block], nodes)
                out[block] = new
                if dout is not None:
                    dout[block] = dot
    return out, dout


def pair_diagonal(phi: Fn, dphi: Fn | None, q: Array) -> tuple[Array, Array | None]:
    """Adaptive rule at ``q11 = q22 = q12 = q`` (elementwise), e.g. ``E[φ(u)²]``."""
    xp = array_namespace(q)
    lv = node_levels(q)
    out = xp.empty_like(q)
    dout = xp.empty_like(q) if dphi is not None else None
    for level, (_, nodes) in enumerate(LEVELS):
        idx = xp.nonzero(lv == level)[0]
        if idx.shape[0] == 0:
            continue
        qi = q[idx]
        new, dot = gaussian_pair(phi, dphi, qi, qi, qi, nodes)
        out[idx] = new
        if dout is not None:
            dout[idx] = dot
    return out, dout


def numerical_diagonal(name: str, q: Array) -> Array:
    """``E[φ(u)²]`` by the same (adaptive) rule at ``ρ = 1``."""
    phi, _ = FUNCTIONS[name]
    return pair_diagonal(phi, None, q)[0]


def apply_numerical(state: KernelState, layer: Activation) -> KernelState:
    """The state after the quadrature activation ``layer.name``."""
    try:
        phi, dphi = FUNCTIONS[layer.name]
    except KeyError:
        raise ValueError(f"no numerical rule for activation {layer.name!r}") from None
    want = state.ntk is not None
    nngp, dot = pair_matrix(phi, dphi if want else None, state.cov1, state.cov2, state.nngp)
    return state.replace(
        cov1=numerical_diagonal(layer.name, state.cov1),
        cov2=numerical_diagonal(layer.name, state.cov2),
        nngp=nngp,
        ntk=state.ntk * dot if want else None,
    )
