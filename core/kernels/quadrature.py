"""Activations without a closed form (tanh, sigmoid, softplus, swish): Hermite series.

``E[φ(u)φ(v)]`` and ``E[φ'(u)φ'(v)]`` for ``(u, v)`` centred Gaussian with variances
``q11, q22`` and covariance ``q12``, i.e. ``u = s1 z1``, ``v = s2 z2`` with ``s = √q`` and
``corr(z1, z2) = ρ = q12/√(q11 q22)``, by Mehler's formula (``hermite.py``)

    E[φ(u)φ(v)] = Σ_k c_k(s1) c_k(s2) ρ^k,     c_k(s) = E[φ(s z) He_k(z)] / √k!,

and the same with the coefficients of φ' for the derivative kernel. Per point (one variance)
the coefficients come from a 1-D Gauss–Hermite rule; per entry the sum stops at the first
order ``k`` with ``t_k(s1) t_k(s2) |ρ|^{k+1} ≤ TOLERANCE``, where ``t_k = √(Σ_{j>k} c_j² / E[φ²])``
are the relative root tails (Parseval): by Cauchy–Schwarz the truncation error is then at most
``TOLERANCE·√(E[φ(u)²] E[φ(v)²])`` (1e-14; same for φ' with its own energies). Work: per
point ``O(nodes × order)`` in BLAS, per entry ``O(k)`` with ``k`` ≈ 20–60 at ``|ρ| ≤ 0.5``,
growing to the point's order as ``|ρ| → 1`` — instead of the ``N² = 1024…16384``
evaluations of φ and φ' per entry of the previous 2-D rule.

Orders: a point uses the lowest of ``ORDERS`` (16 … 1024; rule of ``RULE_FACTOR × order``
nodes, which keeps the coefficients accurate to ~1e-15) whose root tails after the last order
are ≤ ``√TOLERANCE`` for φ and φ' — a property of its variance alone (per-function scale bounds,
searched once, then checked on the point's own tails). An entry uses the larger of its two
points' orders, each point's coefficients by its own rule, so its value depends only on its
two points (up to the ~1e-16 rounding of batched BLAS products). Points that cannot meet the
tolerance at the top order still use it when their root tails there are ≤ ``RELAXED_TAIL``
(truncation ≤ 1e-6 relative, measured far smaller: tanh for q ≈ 6.8…29); beyond (tanh q ≳ 29,
sigmoid ≳ 117, swish ≳ 157, any q > ``SERIES_MAX_VARIANCE`` = 256) every entry of the point
falls back to the previous tensor-product Gauss–Hermite rule (``LEVELS``: 32…128 nodes per
dimension by ``max(q11, q22)``), which is slow and, there, inaccurate (1e-4…1e-2 for tanh).
Variances where the series converges this slowly are far from the usual O(1) regime.

Diagonals (``ρ = 1``, ``E[φ(u)²]``) and entries with ``|ρ| = 1`` are 1-D integrals and use the
1-D rule directly (so a duplicate point gets exactly its diagonal value). A zero variance has
``ρ = 0`` with everything: ``φ(0)·E[φ(v)]``. Everything is computed in float64 and cast to the
dtype of the inputs (float32 too); values are finite for any finite input.

Measured accuracy against an independent reference (2-D trapezoid rule on [-13, 13]², which
converges exponentially for these analytic integrands, checked against ``scipy`` ``dblquad``),
``q11 = q``, ``q22 = 0.8 q``, ``ρ ∈ {±1, −0.9, 0, 0.5, 0.99, 0.9999}``, q ∈ {0.25, 0.5, 1, 2, 3,
4, 6, 9, 12, 16}: max absolute error of ``E[φφ]`` / ``E[φ'φ']``
(``tests/core/test_kernels_quadrature.py`` re-checks a subset and the bound itself):

==========  ===============  ===============  ===============  ===============
φ           q ≤ 1            q ≤ 4            q ≤ 9            q ≤ 16
==========  ===============  ===============  ===============  ===============
tanh        3e-15 / 5e-15    6e-15 / 4e-15    8e-15 / 3e-14    1e-12 / 8e-11
sigmoid     3e-15 / 4e-16    3e-15 / 3e-16    4e-15 / 2e-16    4e-15 / 2e-16
softplus    6e-15 / 3e-15    2e-14 / 3e-15    4e-14 / 4e-15    7e-14 / 4e-15
swish       2e-15 / 4e-15    1e-14 / 5e-15    4e-14 / 4e-15    7e-14 / 5e-15
==========  ===============  ===============  ===============  ===============

(softplus and swish grow like q: relative errors stay ≤ 1e-14. The tanh q ≤ 16 column is the
relaxed top order at ρ = 0.9999. The previous 2-D rule, on the same points: tanh 1e-6 / 3e-5 at
q ≤ 1 up to 7e-4 / 5e-3 at q ≤ 16, sigmoid 4e-13 … 4e-7, softplus 2e-14 … 8e-8, swish 3e-12 …
4e-6.) Other functions given to ``pair_matrix`` get the same treatment: smooth ones (erf) the
series, non-smooth ones (relu: a kink, algebraic Hermite decay) the 2-D rule, off by up to a
few percent (``test_kernels_quadrature.py`` compares both with their closed forms).

Vectorised NumPy/CuPy code (``array_namespace``); the per-entry loop is compiled with numba on
NumPy arrays and vectorised in chunks of ``CHUNK_ELEMENTS`` otherwise (``COMPILED``). Row blocks
seen again (a Gram matrix computed tile by tile) reuse their series data (``_points``, bounded);
the Hermite rules (about 35 MB for all orders) and the per-function order bounds are built on
first use and kept (a first call costs a few seconds more).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.backend import array_namespace, to_numpy
from core.kernels.geometry import correlation, norm_product, split_scale
from core.kernels.hermite import cross_energy, energy, expansion, series_sums

Array = Any
Fn = Callable[[Array], Array]

#: Gauss–Hermite nodes per dimension of the base 2-D rule (variances ≤ 1).
NODES = 32
#: Upper bound on the elements of one temporary (2-D rule: rows × cols × NODES; vectorised
#: series: rows × cols).
CHUNK_ELEMENTS = 1 << 21

#: Truncation tolerance of the series, relative to ``√(E[φ(u)²] E[φ(v)²])`` (and to
#: ``√(E[φ'(u)²] E[φ'(v)²])`` for the derivative kernel).
TOLERANCE = 1e-14
#: Series orders a point may use, ascending; the 1-D rule has ``RULE_FACTOR × order`` nodes.
#: An empty tuple sends every entry to the 2-D rule (the previous method, for comparisons).
ORDERS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024)
RULE_FACTOR = 3
#: Points that cannot meet ``TOLERANCE`` at the top order still use it when their root tails
#: there are at most this (truncation at most ``RELAXED_TAIL²`` relative; the 2-D rule is
#: worse by orders of magnitude at such variances); beyond, the 2-D rule.
RELAXED_TAIL = 1e-3
#: Points of larger variance never try the series.
SERIES_MAX_VARIANCE = 256.0
#: Use the compiled (numba) entry loop on NumPy arrays; the vectorised one otherwise.
COMPILED = True


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


#: φ → φ' for the functions above (a point's series order always accounts for both, so that
#: ``E[φ(u)φ(v)]`` does not depend on whether the derivative kernel is asked for too).
_DERIVATIVES: dict[Fn, Fn] = {phi: dphi for phi, dphi in FUNCTIONS.values()}


# --------------------------------------------------------------------------- the 2-D rule
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


def _pair_matrix_2d(
    phi: Fn, dphi: Fn | None, q1: Array, q2: Array, q12: Array
) -> tuple[Array, Array | None]:
    """The 2-D rule for a block: rows ``q1`` (n1,), columns ``q2`` (n2,), ``q12`` (n1, n2).

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


def _pair_diagonal_2d(phi: Fn, dphi: Fn | None, q: Array) -> tuple[Array, Array | None]:
    """The 2-D rule at ``q11 = q22 = q12 = q`` (elementwise), e.g. ``E[φ(u)²]``."""
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


# ------------------------------------------------------------------------ the Hermite series
@dataclass(frozen=True)
class _Expansions:
    """Series data of some points at one order: coefficients, root tails, energies."""

    c: Array
    t: Array
    e: Array
    dc: Array | None
    dt: Array | None
    de: Array | None

    def take(self, idx: Array) -> _Expansions:
        """The same data for the points ``idx`` (an index array or a boolean mask)."""
        fields = (self.c, self.t, self.e, self.dc, self.dt, self.de)
        return _Expansions(*(None if a is None else a[idx] for a in fields))

    def accepted(self, limit: float) -> Array:
        """Points whose tails after the last order meet ``limit`` (for φ and φ')."""
        ok = self.t[:, -1] <= limit
        if self.dt is not None:
            ok &= self.dt[:, -1] <= limit
        return ok


def _expand(phi: Fn, dphi: Fn | None, s: Array, level: int, order: int | None = None) -> _Expansions:
    """Series data of scales ``s`` by the rule of ``level`` (``RULE_FACTOR × ORDERS[level]``
    nodes) up to ``order`` (default ``ORDERS[level]``).

    Orders beyond the rule's last Hermite function (``nodes − 1``) are zero coefficients with
    the last tail: the discrete expansion is complete there.
    """
    nodes = RULE_FACTOR * ORDERS[level]
    order = ORDERS[level] if order is None else order
    computed = min(order, nodes - 1)
    parts = []
    for fn in (phi, dphi):
        if fn is None:
            parts += [None, None, None]
            continue
        c, t, e = expansion(fn, s, nodes, computed)
        if computed < order:
            xp = array_namespace(c)
            pad = order - computed
            c = xp.concatenate([c, xp.zeros((c.shape[0], pad), dtype=c.dtype)], axis=1)
            t = xp.concatenate([t, xp.repeat(t[:, -1:], pad, axis=1)], axis=1)
        parts += [c, t, e]
    c, t, e, dc, dt, de = parts
    return _Expansions(c, t, e, dc, dt, de)


def _settings() -> tuple:
    """The module settings a point's series data depend on (keys of the caches below)."""
    return (ORDERS, RULE_FACTOR, TOLERANCE, RELAXED_TAIL, SERIES_MAX_VARIANCE)


#: (φ, φ', settings) → for each level computed so far, the largest scale ``s = √q`` known to
#: pass it.
_BOUNDS: dict[tuple, list[float]] = {}
_BOUNDS_LOCK = threading.Lock()
#: Bisection of a level's bound: rounds of equally spaced trial scales.
_BOUND_ROUNDS, _BOUND_POINTS = 3, 15


def _limit(level: int) -> float:
    """Largest root tail accepted at ``level``; ``len(ORDERS)`` is the top order, relaxed."""
    return RELAXED_TAIL if level >= len(ORDERS) else math.sqrt(TOLERANCE)


def _passes(phi: Fn, dphi: Fn | None, s: np.ndarray, level: int) -> np.ndarray:
    return _expand(phi, dphi, s, min(level, len(ORDERS) - 1)).accepted(_limit(level))


def _level_bound(phi: Fn, dphi: Fn | None, level: int) -> float:
    """The largest scale at which ``level`` passes (searched on a grid; -1 if even 0 fails).

    ``level = len(ORDERS)``: the top order with the relaxed limit ``RELAXED_TAIL``. The
    relative tails grow with the scale (a sharper ``φ(s z)``), so a point passes every level
    whose bound is at least its scale; ``_Points`` still checks each point's own tails.
    """
    key = (phi, dphi, _settings())
    with _BOUNDS_LOCK:
        bounds = _BOUNDS.setdefault(key, [])
        while len(bounds) <= level:
            current = len(bounds)
            lo = max([0.0, *bounds])
            hi = math.sqrt(SERIES_MAX_VARIANCE)
            if not _passes(phi, dphi, np.array([lo]), current)[0]:
                bounds.append(-1.0)  # no point is sent here directly
                continue
            if _passes(phi, dphi, np.array([hi]), current)[0]:
                bounds.append(hi)
                continue
            for _ in range(_BOUND_ROUNDS):  # lo passes, hi fails
                trial = np.linspace(lo, hi, _BOUND_POINTS + 2)[1:-1]
                ok = _passes(phi, dphi, trial, current)
                first_fail = int(np.argmin(ok)) if not ok.all() else len(ok)
                lo = float(trial[first_fail - 1]) if first_fail > 0 else lo
                hi = float(trial[first_fail]) if first_fail < len(ok) else hi
            bounds.append(lo)
        return bounds[level]


class _Points:
    """The points of one side of a block: each one's series order (level), or the 2-D rule.

    A point takes the lowest order of ``ORDERS`` at which its relative root tails are at most
    ``√TOLERANCE`` for φ and φ' (at the top order: ``RELAXED_TAIL``), a property of its variance
    alone: found from the per-level scale bounds (``_level_bound``) and, with ``expand``,
    confirmed on the point's own tails (a point that fails moves up a level). ``level`` is then
    its index, ``len(ORDERS)`` for points left to the 2-D rule. ``cache[level]``: the series data
    of the points of that level, in index order (``position``).
    """

    def __init__(self, phi: Fn, dphi: Fn | None, q: Array, expand: bool = True) -> None:
        xp = array_namespace(q)
        self.xp, self.phi, self.q = xp, phi, q
        self.dphi = dphi if dphi is not None else _DERIVATIVES.get(phi)
        q64 = q.astype(np.float64)
        self.s = xp.sqrt(xp.maximum(q64, 0))
        n = q.shape[0]
        self.fallback = len(ORDERS)
        self.level = xp.full(n, self.fallback, dtype=np.int64)
        self.position = xp.zeros(n, dtype=np.int64)
        self.cache: dict[int, _Expansions] = {}
        self.extended: dict[tuple[int, int], _Expansions] = {}
        todo = q64 <= SERIES_MAX_VARIANCE  # NaN and inf excluded
        top = len(ORDERS) - 1
        for level in range(len(ORDERS) + 1 if ORDERS else 0):  # the last one: relaxed top
            if not bool(todo.any()):
                break
            here = todo & (self.s <= _level_bound(phi, self.dphi, level))
            self.level[here] = min(level, top)
            todo &= ~here
        if not expand:
            return
        for level in range(len(ORDERS)):
            idx = xp.nonzero(self.level == level)[0]
            if idx.shape[0] == 0:
                continue
            ex = _expand(self.phi, self.dphi, self.s[idx], level)
            ok = ex.accepted(_limit(level + 1 if level == top else level))
            if not bool(ok.all()):
                self.level[idx[~ok]] = level + 1
                idx, ex = idx[ok], ex.take(ok)
            if idx.shape[0]:
                self.cache[level] = ex
                self.position[idx] = xp.arange(idx.shape[0])

    def _group(self, own: int, level: int) -> _Expansions:
        """Series data, up to the order of ``level``, of all points of level ``own`` ≤ ``level``
        (by their own rule), in the order of ``position``."""
        if own == level:
            return self.cache[own]
        key = (own, level)
        if key not in self.extended:
            idx = self.xp.nonzero(self.level == own)[0]
            self.extended[key] = _expand(self.phi, self.dphi, self.s[idx], own, ORDERS[level])
        return self.extended[key]

    def at(self, level: int, sel: Array | None) -> _Expansions:
        """Series data up to the order of ``level`` of the points ``sel`` (``None``: all), all of
        level ≤ ``level``: each point by its own rule, so that an entry's value depends only on
        its two points."""
        xp = self.xp
        idx = xp.arange(self.q.shape[0]) if sel is None else sel
        lv = self.level[idx]
        present = [int(v) for v in to_numpy(xp.unique(lv))]
        if len(present) == 1:
            ex = self._group(present[0], level)
            if sel is None and present[0] == level:
                return ex
            return ex.take(self.position[idx])
        whole: list[Array | None] = []
        for field in ("c", "t", "e", "dc", "dt", "de"):
            a = getattr(self.cache.get(level) or self._group(present[0], level), field)
            whole.append(None if a is None else xp.empty((idx.shape[0],) + a.shape[1:], dtype=a.dtype))
        for own in present:
            mask = lv == own
            part = self._group(own, level).take(self.position[idx[mask]])
            for target, field in zip(whole, ("c", "t", "e", "dc", "dt", "de")):
                if target is not None:
                    target[mask] = getattr(part, field)
        return _Expansions(*whole)

    def nbytes(self) -> int:
        """Bytes held by the series data (own and extended orders)."""
        total = 0
        for ex in list(self.cache.values()) + list(self.extended.values()):
            total += sum(int(a.nbytes) for a in (ex.c, ex.t, ex.e, ex.dc, ex.dt, ex.de) if a is not None)
        return total

    def diagonal(self, want_d: bool) -> tuple[Array, Array | None]:
        """``(E[φ(u)²], E[φ'(u)²])``: the 1-D rule of each point's level, or the 2-D rule."""
        xp = self.xp
        out = xp.empty_like(self.q)
        dout = xp.empty_like(self.q) if want_d else None
        for level in range(len(ORDERS)):
            idx = xp.nonzero(self.level == level)[0]
            if idx.shape[0] == 0:
                continue
            ex = self.cache.get(level)  # the same sums as ``energy`` (same rule, same order)
            nodes = RULE_FACTOR * ORDERS[level]
            e = ex.e if ex is not None else energy(self.phi, self.s[idx], nodes)
            out[idx] = e.astype(out.dtype)
            if dout is not None:
                de = ex.de if ex is not None and ex.de is not None else energy(self.dphi, self.s[idx], nodes)
                dout[idx] = de.astype(dout.dtype)
        rest = xp.nonzero(self.level == self.fallback)[0]
        if rest.shape[0]:
            new, dot = _pair_diagonal_2d(self.phi, self.dphi if want_d else None, self.q[rest])
            out[rest] = new
            if dout is not None:
                dout[rest] = dot
        return out, dout


#: Recently built points (``_points``): a Gram matrix computed tile by tile presents the same
#: row blocks several times per layer. At most ``_MEMO_ENTRIES`` and about ``_MEMO_BYTES``.
_MEMO: OrderedDict[tuple, _Points] = OrderedDict()
_MEMO_LOCK = threading.Lock()
_MEMO_ENTRIES, _MEMO_BYTES = 8, 1 << 27


def _points(phi: Fn, dphi: Fn | None, q: Array) -> _Points:
    """``_Points(phi, dphi, q)``, reused when the same function and variances come again."""
    host = to_numpy(q)
    derivative = dphi if dphi is not None else _DERIVATIVES.get(phi)
    key = (phi, derivative, _settings(), array_namespace(q).__name__, host.dtype.str, host.tobytes())
    with _MEMO_LOCK:
        hit = _MEMO.get(key)
        if hit is not None:
            _MEMO.move_to_end(key)
            return hit
    points = _Points(phi, dphi, q.copy())
    with _MEMO_LOCK:
        _MEMO[key] = points
        while len(_MEMO) > _MEMO_ENTRIES or (len(_MEMO) > 1 and sum(p.nbytes() for p in _MEMO.values()) > _MEMO_BYTES):
            _MEMO.popitem(last=False)
    return points


def _same_points(q1: Array, q2: Array) -> bool:
    if q1 is q2:
        return True
    xp = array_namespace(q1, q2)
    return q1.shape == q2.shape and bool(xp.array_equal(q1, q2))


def _everything(sel: Array, n: int) -> bool:
    return int(sel.shape[0]) == n


def _series_block(
    rows: _Points, cols: _Points, q12: Array, level: int, r: Array, c: Array, want_d: bool
) -> tuple[Array, Array | None]:
    """Series values (float64) of the entries ``r × c`` (index arrays) at ``level``."""
    xp = rows.xp
    all_r = _everything(r, rows.q.shape[0])
    all_c = _everything(c, cols.q.shape[0])
    a = rows.at(level, None if all_r else r)
    b = cols.at(level, None if all_c else c)
    q1 = rows.q.astype(np.float64)
    q2 = cols.q.astype(np.float64)
    if not all_r:
        q1 = q1[r]
    if not all_c:
        q2 = q2[c]
    block = q12
    if not (all_r and all_c):
        block = q12[xp.ix_(r, c)]
    m1, p1 = split_scale(q1)
    m2, p2 = split_scale(q2)
    rho = correlation(block.astype(np.float64), norm_product(m1[:, None], p1[:, None], m2[None, :], p2[None, :]))
    out, dout = series_sums(
        rho,
        (a.c, a.t),
        (b.c, b.t),
        (a.dc, a.dt) if want_d else None,
        (b.dc, b.dt) if want_d else None,
        TOLERANCE,
        compiled=COMPILED,
        chunk=CHUNK_ELEMENTS,
    )
    # |ρ| = 1 (duplicates and their multiples): a 1-D integral, by the 1-D rule of ``level``
    # (a duplicate then gets exactly its diagonal value)
    i, j = xp.nonzero(xp.abs(rho) == 1)
    if i.shape[0]:
        nodes = RULE_FACTOR * ORDERS[level]
        s1 = (rows.s if all_r else rows.s[r])[i]
        s2 = (cols.s if all_c else cols.s[c])[j] * rho[i, j]
        out[i, j] = cross_energy(rows.phi, s1, s2, nodes)
        if want_d:
            dout[i, j] = cross_energy(rows.dphi, s1, s2, nodes)
    return out, dout


def _pair_block(rows: _Points, cols: _Points, q12: Array, want_d: bool) -> tuple[Array, Array | None]:
    """Both kernels for the block ``rows × cols``: entries grouped by the larger level of their
    two points, each group by the series at that level or, past the last, by the 2-D rule."""
    xp = rows.xp
    dtype = q12.dtype
    out = xp.empty_like(q12)
    dout = xp.empty_like(q12) if want_d else None
    lv1, lv2 = rows.level, cols.level
    n1, n2 = q12.shape
    for level in range(rows.fallback + 1):
        r_in = xp.nonzero(lv1 <= level)[0]
        c_in = xp.nonzero(lv2 <= level)[0]
        # entries whose larger level is exactly ``level``
        for r, c in ((r_in[lv1[r_in] == level], c_in), (r_in[lv1[r_in] < level], c_in[lv2[c_in] == level])):
            if r.shape[0] == 0 or c.shape[0] == 0:
                continue
            full = _everything(r, n1) and _everything(c, n2)
            block = (slice(None), slice(None)) if full else xp.ix_(r, c)
            if level == rows.fallback:
                dphi = rows.dphi if want_d else None
                new, dot = _pair_matrix_2d(rows.phi, dphi, rows.q[r], cols.q[c], q12[block])
            else:
                new, dot = _series_block(rows, cols, q12, level, r, c, want_d)
            out[block] = new.astype(dtype, copy=False)
            if dout is not None:
                dout[block] = dot.astype(dtype, copy=False)
    return out, dout


def pair_matrix(
    phi: Fn, dphi: Fn | None, q1: Array, q2: Array, q12: Array
) -> tuple[Array, Array | None]:
    """``(E[φ(u)φ(v)], E[φ'(u)φ'(v)])`` for a block: rows ``q1`` (n1,), columns ``q2`` (n2,),
    covariances ``q12`` (n1, n2); ``dphi=None`` skips the derivative kernel.

    Series where both points have a series order, else the 2-D rule (module doc).
    """
    rows = _points(phi, dphi, q1)
    cols = rows if _same_points(q1, q2) else _points(phi, dphi, q2)
    return _pair_block(rows, cols, q12, dphi is not None)


def pair_diagonal(phi: Fn, dphi: Fn | None, q: Array) -> tuple[Array, Array | None]:
    """``(E[φ(u)²], E[φ'(u)²])`` for each variance ``q`` (``dphi=None``: first only)."""
    return _Points(phi, dphi, q, expand=False).diagonal(dphi is not None)


def numerical_diagonal(name: str, q: Array) -> Array:
    """``E[φ(u)²]`` for each variance ``q``."""
    phi, _ = FUNCTIONS[name]
    return pair_diagonal(phi, None, q)[0]
