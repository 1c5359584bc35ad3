"""Hermite (Mehler) series of Gaussian dual kernels: the engine behind ``quadrature.py``.

For ``u = s1 z1``, ``v = s2 z2`` with ``z1, z2`` standard normal of correlation ``ρ`` and
``h_k = He_k/√k!`` the orthonormal (probabilists') Hermite polynomials, Mehler's formula gives

    E[f(u) g(v)] = Σ_k c_k(f, s1) c_k(g, s2) ρ^k,    c_k(f, s) = E[f(s z) h_k(z)],

for any ``f, g`` of finite Gaussian energy ``E_f(s) = E[f(s z)²] = Σ_k c_k(f, s)²`` (Parseval).
Truncating after order ``K`` leaves, by Cauchy–Schwarz,

    |Σ_{k>K} c_k(f, s1) c_k(g, s2) ρ^k| ≤ |ρ|^{K+1} √(T_K(f, s1) T_K(g, s2)),

with the tail energies ``T_K = Σ_{k>K} c_k²``. This module computes, per point (one ``s``):
the coefficients ``c_0..c_K``, the energy ``E`` and the *relative root tails*
``t_k = √(T_k / E)`` (``expansion``), and per pair the partial sums that stop at the first
``k`` with ``t_k(s1) t_k(s2) |ρ|^{k+1} ≤ tol`` (``series_sums``): truncation error at most
``tol·√(E_f(s1) E_g(s2))``. So the work per matrix entry is O(order actually needed), which is
small unless ``|ρ|`` is close to 1.

The coefficients come from an ``M``-node Gauss–Hermite rule (``hermite_rule``) as
``c = F Ψ`` with ``F_m = f(s z_m) √w_m`` and the Hermite functions ``Ψ_mk = √w_m h_k(z_m)``
(``hermite_functions``); the tail beyond ``K`` is the squared norm of the projection residual
``F − Ψ c`` (discrete Parseval, no cancellation), so ``t`` is accurate down to ~1e-16. The
rule is computed stably for any ``M`` (three-term recurrences with rescaling, weights from
the Christoffel function in log space): no underflowing weight ever multiplies an overflowing
polynomial. Everything is float64.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import numba
import numpy as np
from numba import njit, prange
from scipy.special import roots_hermitenorm

from core.backend import array_namespace
from core.kernels.fused import _RUN_LOCK

Array = Any

#: Rescaling step of the recurrences (values are kept below 2^400 in magnitude).
_BIG = 2.0**400
_LOG_BIG = 400 * math.log(2.0)

#: Serialises the compiled pass with the fused engine's (each already uses every core, and
#: numba's ``workqueue`` threading layer is not thread-safe): the same lock.
_SERIES_LOCK = _RUN_LOCK


@cache
def hermite_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(z, log w)`` of the ``nodes``-point Gauss rule for N(0, 1) (``Σ w = 1``).

    Nodes from SciPy, refined by one Newton step; weights ``1/Σ_{k<M} h_k(z)²`` with the
    orthonormal recurrence rescaled as it grows, so that even weights far below the smallest
    double are represented by their logarithm.
    """
    z = roots_hermitenorm(nodes)[0].astype(np.float64)
    for final in (False, True):
        prev, cur = np.ones_like(z), z.copy()  # h_0, h_1 (times exp(-scale))
        scale = np.zeros_like(z)
        sq = 1.0 + z * z  # Σ h_k², k ≤ 1 (times exp(-2 scale))
        for k in range(1, nodes):
            prev, cur = cur, (z * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
            big = np.abs(cur) > _BIG
            if big.any():
                prev = np.where(big, prev / _BIG, prev)
                cur = np.where(big, cur / _BIG, cur)
                sq = np.where(big, sq / (_BIG * _BIG), sq)
                scale = np.where(big, scale + _LOG_BIG, scale)
            if k + 1 < nodes:
                sq = sq + cur * cur
        # prev = h_{M-1}, cur = h_M (same scale); h_M' = √M h_{M-1}
        if not final:
            z = z - cur / (math.sqrt(nodes) * prev)
    log_w = -(np.log(sq) + 2 * scale)
    log_w -= np.logaddexp.reduce(log_w)
    return z, log_w


@cache
def hermite_functions(nodes: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """``(z, Ψ)``: nodes and ``Ψ[m, k] = √w_m h_k(z_m)`` for ``k ≤ order`` (``nodes × order+1``).

    The columns are orthonormal (``ΨᵀΨ = I`` up to rounding, for ``order < nodes``).
    """
    z, log_w = hermite_rule(nodes)
    psi = np.empty((nodes, order + 1))
    prev, cur = np.zeros_like(z), np.ones_like(z)  # h_{-1}, h_0 (times exp(-scale))
    scale = 0.5 * log_w
    psi[:, 0] = np.exp(scale)
    for k in range(order):
        prev, cur = cur, (z * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
        big = np.abs(cur) > _BIG
        if big.any():
            prev = np.where(big, prev / _BIG, prev)
            cur = np.where(big, cur / _BIG, cur)
            scale = np.where(big, scale + _LOG_BIG, scale)
        psi[:, k + 1] = cur * np.exp(scale)  # underflows to 0 only where negligible
    psi.setflags(write=False)
    z.setflags(write=False)
    return z, psi


_DEVICE_CACHE: dict[tuple[str, int, int], tuple[Array, Array]] = {}


def _functions_on(xp: Any, nodes: int, order: int) -> tuple[Array, Array]:
    """``hermite_functions`` as arrays of ``xp`` (copied to the device once)."""
    z, psi = hermite_functions(nodes, order)
    if xp is np:
        return z, psi
    key = (xp.__name__, nodes, order)
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE[key] = (xp.asarray(z), xp.asarray(psi))
    return _DEVICE_CACHE[key]


def _weighted_values(fn: Any, s: Array, z: Array, psi: Array) -> Array:
    """``F[i, m] = fn(s_i z_m) √w_m``."""
    return fn(s[:, None] * z[None, :]) * psi[:, 0]


def energy(fn: Any, s: Array, nodes: int) -> Array:
    """``E[fn(s z)²]`` for each scale by the ``nodes``-point rule, exactly as ``expansion``."""
    xp = array_namespace(s)
    z, psi = _functions_on(xp, nodes, 0)
    f = _weighted_values(fn, s, z, psi)
    return xp.sum(f * f, axis=1)


def cross_energy(fn: Any, s1: Array, s2: Array, nodes: int) -> Array:
    """``E[fn(s1 z) fn(s2 z)]`` elementwise (the kernel at correlation ±1: ``s2 = ±scale``) by
    the ``nodes``-point rule; equal to ``energy`` bit for bit where ``s2`` equals ``s1``."""
    xp = array_namespace(s1)
    z, psi = _functions_on(xp, nodes, 0)
    f1 = _weighted_values(fn, s1, z, psi)
    if bool(xp.array_equal(s1, s2)):
        return xp.sum(f1 * f1, axis=1)
    f2 = _weighted_values(fn, s2, z, psi)
    return xp.sum(f1 * f2, axis=1)


def expansion(fn: Any, s: Array, nodes: int, order: int) -> tuple[Array, Array, Array]:
    """``(c, t, E)`` of ``fn(s z)`` for each scale ``s`` (float64, shape (n,)).

    ``c`` (n, order+1): normalised Hermite coefficients ``E[fn(s z) h_k(z)]``;
    ``t`` (n, order+1): relative root tails ``√(Σ_{j>k} c_j² / E)`` (0 where ``E = 0``);
    ``E`` (n,): ``E[fn(s z)²]``. All by the ``nodes``-point rule.
    """
    xp = array_namespace(s)
    z, psi = _functions_on(xp, nodes, order)
    f = _weighted_values(fn, s, z, psi)
    c = f @ psi
    resid = f - c @ psi.T
    e = xp.sum(f * f, axis=1)  # the same sums as ``energy``
    rest = xp.sum(resid * resid, axis=1)  # tail beyond ``order``: no cancellation
    sq = c[:, 1:] * c[:, 1:]
    tails = xp.empty_like(c)
    tails[:, :-1] = xp.flip(xp.cumsum(xp.flip(sq, axis=1), axis=1), axis=1)
    tails[:, -1] = 0
    tails += rest[:, None]
    t = xp.sqrt(tails / xp.where(e > 0, e, 1)[:, None])
    return c, t, e


# ------------------------------------------------------------------------------ entry sums
@njit(cache=True, parallel=True, nogil=True, error_model="numpy")
def _sums_compiled(rho, c1, t1, c2, t2, d1, u1, d2, u2, want_d, tol, out, dout):  # pragma: no cover - compiled
    n1, n2 = rho.shape
    top = c1.shape[1]
    for i in prange(n1):
        for j in range(n2):
            r = rho[i, j]
            s = 0.0
            sd = 0.0
            p = 1.0
            live = True
            dlive = want_d
            for k in range(top):
                if live:
                    s += c1[i, k] * c2[j, k] * p
                if dlive:
                    sd += d1[i, k] * d2[j, k] * p
                p *= r
                a = abs(p)
                if live and t1[i, k] * t2[j, k] * a <= tol:
                    live = False
                if dlive and u1[i, k] * u2[j, k] * a <= tol:
                    dlive = False
                if not (live or dlive):
                    break
            out[i, j] = s
            if want_d:
                dout[i, j] = sd


def _sums_vectorised(rho, c1, t1, c2, t2, d1, u1, d2, u2, want_d, tol, out, dout, chunk):
    """The same arithmetic as ``_sums_compiled``, entry by entry, with array operations."""
    xp = array_namespace(rho)
    n1, n2 = rho.shape
    step = max(1, chunk // max(n2, 1))
    for i0 in range(0, n1, step):
        sl = slice(i0, min(n1, i0 + step))
        r = rho[sl]
        s = xp.zeros_like(r)
        sd = xp.zeros_like(r)
        p = xp.ones_like(r)
        live = xp.ones(r.shape, dtype=bool)
        dlive = xp.full(r.shape, bool(want_d))
        for k in range(c1.shape[1]):
            s = xp.where(live, s + c1[sl, k, None] * c2[None, :, k] * p, s)
            if want_d:
                sd = xp.where(dlive, sd + d1[sl, k, None] * d2[None, :, k] * p, sd)
            p = p * r
            a = xp.abs(p)
            live &= ~(t1[sl, k, None] * t2[None, :, k] * a <= tol)
            if want_d:
                dlive &= ~(u1[sl, k, None] * u2[None, :, k] * a <= tol)
            if not bool(live.any()) and not bool(dlive.any()):
                break
        out[sl] = s
        if want_d:
            dout[sl] = sd


def series_sums(
    rho: Array,
    first: tuple[Array, Array],
    second: tuple[Array, Array],
    dfirst: tuple[Array, Array] | None,
    dsecond: tuple[Array, Array] | None,
    tol: float,
    *,
    compiled: bool = True,
    chunk: int = 1 << 21,
) -> tuple[Array, Array | None]:
    """Truncated Mehler sums for a block: ``Σ_{k≤K_ij} c_k(i) c_k(j) ρ_ij^k`` per entry.

    ``rho`` (n1, n2) float64 in [-1, 1]; ``first = (c1, t1)`` of the rows, ``second = (c2, t2)``
    of the columns (``expansion`` outputs, the same order ``K``); ``dfirst``/``dsecond`` the
    same for the derivative kernel (``None``: skipped). ``K_ij`` is the first order with
    ``t_k(i) t_k(j) |ρ|^{k+1} ≤ tol`` (else ``K``), chosen per entry and per kernel, so an
    entry's value depends only on its own inputs. ``compiled``: numba on NumPy arrays (else,
    and always for CuPy, the vectorised version, ``chunk`` elements at a time).
    """
    xp = array_namespace(rho)
    want_d = dfirst is not None and dsecond is not None
    c1, t1 = first
    c2, t2 = second
    d1, u1 = dfirst if want_d else first
    d2, u2 = dsecond if want_d else second
    out = xp.empty(rho.shape, dtype=np.float64)
    dout = xp.empty(rho.shape if want_d else (0, 0), dtype=np.float64)
    if rho.size == 0:
        return out, (dout if want_d else None)
    if compiled and xp is np:
        args = [np.ascontiguousarray(a, dtype=np.float64) for a in (rho, c1, t1, c2, t2, d1, u1, d2, u2)]
        with _SERIES_LOCK:
            previous = numba.set_parallel_chunksize(4)  # rows near |ρ| = 1 cost more
            try:
                _sums_compiled(*args, want_d, float(tol), out, dout)
            finally:
                numba.set_parallel_chunksize(previous)
    else:
        _sums_vectorised(rho, c1, t1, c2, t2, d1, u1, d2, u2, want_d, tol, out, dout, chunk)
    return out, (dout if want_d else None)
