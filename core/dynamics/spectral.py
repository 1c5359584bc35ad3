"""One eigendecomposition of a kernel matrix, reused by every time, variance and spectrum.

Conventions: a kernel (Gram) matrix ``K`` is a symmetric positive semi-definite n × n array,
handled in float64; only its lower triangle is read. Eigenvalues are clipped at 0 (the
round-off negatives of a PSD kernel become 0) and kept in descending order.

The spectral filter ``φ_t`` turns the closed forms of training into a diagonal scaling:
``K_r⁻¹ (I − e^{−η K_r t / N}) = V diag(φ_t(μ)) Vᵀ`` with ``K_r = V diag(μ) Vᵀ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["flow", "gd"]
Time = float | int | None  # None (or inf): the end of training, t = ∞

EPS = float(np.finfo(np.float64).eps)


def as_square(kernel: np.ndarray, name: str = "kernel") -> np.ndarray:
    """``kernel`` as a finite float64 n × n array (no copy when it already is one)."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError(f"{name} has non-finite entries")
    return k


def singular_cutoff(mu_max: float, n: int) -> float:
    """Eigenvalues ``μ ≤ n·eps·μ_max`` count as numerically zero."""
    return n * EPS * mu_max


def _eigh(kernel: np.ndarray, *, vectors: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The one eigensolver: ``numpy.linalg.eigh`` (or ``eigvalsh``), clipped at 0, descending."""
    k = as_square(kernel)
    if vectors:
        lam, vec = np.linalg.eigh(k)
        return np.maximum(lam[::-1], 0.0), np.ascontiguousarray(vec[:, ::-1])
    return np.maximum(np.linalg.eigvalsh(k)[::-1], 0.0), None


@dataclass(frozen=True, eq=False)
class EigenBasis:
    """``K = V diag(λ) Vᵀ``: ``eigenvalues`` λ (descending, clipped at 0), ``eigenvectors`` V.

    Compute it once per kernel with :meth:`of` (one O(n³) ``eigh``) and pass it to every
    trajectory, prediction or variance on that kernel.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray

    @classmethod
    def of(cls, kernel: np.ndarray) -> EigenBasis:
        lam, vec = _eigh(kernel, vectors=True)
        return cls(lam, vec)

    @property
    def n(self) -> int:
        return int(self.eigenvalues.size)

    def coordinates(self, a: np.ndarray) -> np.ndarray:
        """``Vᵀ a``: the rows of ``a`` (n × m) expressed in the eigenbasis."""
        return self.eigenvectors.T @ a


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of ``K`` (descending, clipped at 0; all or the ``top_k`` largest).

    ``condition_number`` is ``λ_max / λ_min`` over all n eigenvalues, ``float('inf')`` when
    ``λ_min`` is 0 (after clipping) — a finite answer for a singular matrix would mislead, so
    the caller decides how to report it. ``trace`` is ``trace(K)`` itself.
    """

    eigenvalues: np.ndarray
    condition_number: float
    min_eigenvalue: float
    trace: float


def spectrum(kernel: np.ndarray, top_k: int | None = None, *, basis: EigenBasis | None = None) -> Spectrum:
    """The spectrum of ``kernel``: eigenvalues only (``eigvalsh``, ~1/4 of a full ``eigh``),
    or those of ``basis`` when one was already computed for this kernel."""
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be ≥ 1, got {top_k}")
    k = as_square(kernel)
    lam = basis.eigenvalues if basis is not None else _eigh(k, vectors=False)[0]
    lam_max, lam_min = float(lam[0]), float(lam[-1])
    cond = lam_max / lam_min if lam_min > 0 else float("inf")
    return Spectrum(lam[:top_k].copy(), cond, lam_min, float(np.trace(k)))


def _check_times(times: Sequence[Time], method: Method) -> list[float | None]:
    if method not in ("flow", "gd"):
        raise ValueError(f"method must be 'flow' or 'gd', got {method!r}")
    out: list[float | None] = []
    for t in times:
        if t is None or t == float("inf"):
            out.append(None)
            continue
        t = float(t)
        if not np.isfinite(t) or t < 0:
            raise ValueError(f"times must be ≥ 0 (or None for t = ∞), got {t}")
        if method == "gd" and t != int(t):
            raise ValueError(f"gradient-descent times are integer step counts, got {t}")
        out.append(t)
    return out


def time_filter(mu: np.ndarray, times: Sequence[Time], *, rate: float, method: Method = "flow") -> np.ndarray:
    """``φ_t(μ)`` for each time (rows) and eigenvalue ``μ ≥ 0`` of ``K_r`` (columns).

    ``rate = η / N`` (learning rate over the loss normalization count). Time units:
    ``flow``: t ≥ 0 real, ``φ = (1 − e^{−rate·μ·t}) / μ`` (expm1; ``→ rate·t`` as μ → 0);
    ``gd``: t = s integer steps, ``φ = (1 − (1 − rate·μ)^s) / μ`` (log1p/expm1 while
    ``rate·μ < 1``; ``→ rate·s`` as μ → 0). Finite for every μ ≥ 0 and finite t.
    ``t = None`` (∞): ``φ = 1/μ``, and 0 where ``μ ≤ n·eps·μ_max``: the pseudo-inverse, which is
    the limit of the predictions (they never move along a null direction of the kernel). Under
    ``gd`` that limit exists only for ``rate·μ_max < 2``; otherwise ``ValueError``.
    Cost O(len(times)·n).
    """
    mu = np.asarray(mu, dtype=np.float64)
    steps = _check_times(times, method)
    out = np.empty((len(steps), mu.size))
    a = rate * mu
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inverse = np.where(mu > singular_cutoff(float(mu.max(initial=0.0)), mu.size), 1.0 / mu, 0.0)
        for i, t in enumerate(steps):
            if t is None:
                if method == "gd" and a.max(initial=0.0) >= 2.0:
                    raise ValueError(
                        "gradient descent diverges: learning_rate ≥ max_stable_learning_rate, "
                        "so it has no end of training (t = ∞)"
                    )
                out[i] = inverse
            elif method == "flow":
                x = a * t
                out[i] = rate * t * np.where(x > 0, -np.expm1(-x) / x, 1.0)
            else:
                small = a < 1.0  # (1 − a)^s = exp(s·log1p(−a)) without cancellation
                g_small = -np.expm1(t * np.log1p(-np.where(small, a, 0.0)))
                g_large = 1.0 - np.power(1.0 - a, t)
                g = np.where(small, g_small, g_large)
                out[i] = rate * np.where(a > 0, g / a, t)
    return out
