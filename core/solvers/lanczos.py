"""Training trajectories ``α(t) = f_t(K_r) y`` for many times at once, by Lanczos.

``K_r = K + shift·I``; ``f_t`` is :func:`core.dynamics.spectral.time_filter`:
flow ``α(t) = K_r⁻¹ (I − e^{−rate·K_r·t}) y``, gd ``α(s) = K_r⁻¹ (I − (I − rate·K_r)^s) y``,
``rate = η/N``. Training predictions ``f_t(X) = K α(t)``, test predictions ``K(x*, X) α(t)``.

Each column y_j gets its own Lanczos process ``K Q_m = Q_m T_m + β_m q_{m+1} e_mᵀ``
(``q_1 = y_j/‖y_j‖``, full reorthogonalization: classical Gram–Schmidt twice); the columns
share one kernel product per iteration. With ``T_m = S diag(θ) Sᵀ`` (Ritz values θ of K):
``α(t) ≈ ‖y_j‖ Q_m S diag(φ_t(θ + shift)) Sᵀ e_1 = Q_m c(t)`` and, exactly in that basis,
``K α(t) = Q_{m+1} [T_m c(t); β_m e_mᵀ c(t)]`` — no further kernel product. Ritz values are
clipped at 0 before filtering, as eigenvalues are in :mod:`core.dynamics`, so a tiny or
round-off-negative θ gives the finite λ → 0 limit of the filter, never NaN.

Stopping: at checks spaced by ``max(1, m // 8)`` steps, the change since the previous check of
every ``α(t)`` and ``K α(t)`` (relative, in the orthonormal basis: ``‖c − c_prev‖ / ‖c‖``) is
the column's estimated error; a column stops once it is ≤ tol, or when its Krylov space
is invariant (``β_m`` at round-off level, or m = n), where the result is exact up to round-off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.linalg import eigh_tridiagonal

from core.dynamics.spectral import EPS, time_filter
from core.solvers.report import Callback, MatMat, NotConverged, SolveReport, apply, as_block, check_tolerance


@dataclass(frozen=True)
class KrylovTrajectory:
    """``coefficients`` α(t): (T, n, k) with ``f_t(x*) = K(x*, X) α(t)``; ``train_predictions``
    ``K α(t)``: (T, n, k) (k = 1 for 1-D targets); ``ritz_values``: of K (not K + shift),
    descending, clipped at 0, from the column with the largest Krylov space; ``iterations``:
    Lanczos steps (= batched kernel products); ``estimated_error``: max over columns and times
    of the estimated relative error of α(t) and K α(t) (module docstring)."""

    coefficients: np.ndarray
    train_predictions: np.ndarray
    ritz_values: np.ndarray
    iterations: int
    estimated_error: float


@dataclass
class _Column:
    """One column's Lanczos state: diagonal ``a`` and off-diagonal ``b`` of T (b[m-1] = β_m)."""

    norm: float
    a: list[float]
    b: list[float]
    coef: np.ndarray | None = None  # c(t): T × m
    pred: np.ndarray | None = None  # [T_m c; β_m c_m]: T × (m + 1)
    ritz: np.ndarray | None = None
    error: float = float("inf")
    invariant: bool = False


def _relative_change(new: np.ndarray, old: np.ndarray | None) -> float:
    if old is None:
        return float("inf")
    diff = new.copy()
    diff[:, : old.shape[1]] -= old
    num, den = np.linalg.norm(diff, axis=1), np.linalg.norm(new, axis=1)
    return float(np.max(np.where(den > 0, num / np.where(den > 0, den, 1.0), num)))


def _evaluate(col: _Column, times: Sequence[float], method: str, rate: float, shift: float) -> None:
    """c(t) and the training-prediction coordinates from T_m; updates the column's error."""
    a, b = np.asarray(col.a), np.asarray(col.b)
    m = a.size
    theta, s = eigh_tridiagonal(a, b[: m - 1]) if m > 1 else (a.copy(), np.ones((1, 1)))
    with np.errstate(over="ignore", invalid="ignore"):
        phi = time_filter(np.maximum(theta, 0.0) + shift, times, rate=rate, method=method)
        coef = col.norm * (phi * s[0]) @ s.T
        pred = np.empty((coef.shape[0], m + 1))
        pred[:, :m] = a * coef
        pred[:, 1:m] += b[: m - 1] * coef[:, : m - 1]
        pred[:, : m - 1] += b[: m - 1] * coef[:, 1:]
        pred[:, m] = b[m - 1] * coef[:, m - 1]
    if not (np.isfinite(coef).all() and np.isfinite(pred).all()):
        raise ValueError(
            "the trajectory overflows float64: gradient descent diverges at this learning_rate "
            "(rate·λ_max(K + ridge) ≥ 2) for this many steps"
        )
    error = max(_relative_change(coef, col.coef), _relative_change(pred, col.pred))
    col.coef, col.pred, col.ritz = coef, pred, np.maximum(theta[::-1], 0.0)
    col.error = m * EPS if col.invariant else error


def krylov_trajectory(
    matmat: MatMat, y: np.ndarray, times: np.ndarray, *, method: Literal["flow", "gd"], rate: float,
    shift: float = 0.0, tol: float = 1e-8, max_iter: int = 1000, callback: Callback | None = None,
) -> KrylovTrajectory:
    """α(t) and K α(t) for every time in ``times`` (flow: real t ≥ 0; gd: integer steps) by
    Lanczos on ``matmat: V ↦ K V`` (module docstring). ``y``: (n,) or (n, k); ``rate`` = η/N > 0;
    ``shift`` ≥ 0 (the effective ridge). ``callback(iteration, q, error)`` after each step with
    the newest Lanczos vectors (n × k_active; for progress and cancellation) and the largest
    current error estimate (inf before the second check). Raises :class:`NotConverged` (the
    trajectory reached as ``.solution``, its estimated error as ``report.relative_residual``)
    when some column's estimate is above ``tol`` after ``max_iter`` steps, ``ValueError`` for
    bad arguments, a non-finite kernel product, or a diverging gradient descent.
    """
    check_tolerance(tol, max_iter)
    if not (np.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be finite and > 0, got {rate!r}")
    if not (np.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift must be finite and ≥ 0, got {shift!r}")
    times = list(np.asarray(times, dtype=np.float64).reshape(-1))
    if not times:
        raise ValueError("times must not be empty")
    time_filter(np.zeros(1), times, rate=rate, method=method)  # validates method and times
    y2, _ = as_block(y, "y")
    n, k = y2.shape
    norms = np.linalg.norm(y2, axis=0)
    cols = [_Column(float(norms[j]), [], []) for j in range(k)]
    capacity = min(max_iter, n) + 1
    basis = np.empty((k, min(capacity, 64), n))
    active = [j for j in range(k) if norms[j] > 0]
    for j in active:
        basis[j, 0] = y2[:, j] / norms[j]
    steps = 0
    next_check = 1
    while active and steps < max_iter:
        if steps + 2 > basis.shape[1]:
            grown = np.empty((k, min(capacity, 2 * basis.shape[1]), n))
            grown[:, : steps + 1] = basis[:, : steps + 1]
            basis = grown
        w_all = apply(matmat, np.ascontiguousarray(basis[active, steps].T)).T.copy()
        steps += 1
        m = steps
        for w, j in zip(w_all, active):
            col, q = cols[j], basis[j, :m]
            a_j = float(q[m - 1] @ w)
            w -= a_j * q[m - 1]
            if m > 1:
                w -= col.b[m - 2] * q[m - 2]
            for _ in range(2):
                w -= (q @ w) @ q
            b_j = float(np.linalg.norm(w))
            col.a.append(a_j)
            t_norm = max(abs(v) for v in col.a) + 2.0 * max(col.b + [b_j])
            if m == n or b_j <= 100.0 * EPS * t_norm:
                col.invariant, b_j = True, 0.0
            else:
                basis[j, m] = w / b_j
            col.b.append(b_j)
        if m >= next_check or m == max_iter or any(cols[j].invariant for j in active):
            for j in active:
                _evaluate(cols[j], times, method, rate, shift)
            active = [j for j in active if not (cols[j].invariant or cols[j].error <= tol)]
            next_check = m + max(1, m // 8)
        if callback is not None:
            current = max((c.error for c in cols if c.norm > 0), default=0.0)
            callback(steps, basis[active, m].T.copy() if active else np.zeros((n, 0)), current)

    result = _assemble(cols, basis, times, n, steps)
    if active:
        report = SolveReport(steps, result.estimated_error, False)
        raise NotConverged("Lanczos", report, result, tol, hint="raise max_iter or tol", quantity="estimated relative error")
    return result


def _assemble(cols: list[_Column], basis: np.ndarray, times: Sequence[float], n: int, steps: int) -> KrylovTrajectory:
    k = len(cols)
    alpha = np.zeros((len(times), n, k))
    train = np.zeros((len(times), n, k))
    for j, col in enumerate(cols):
        if col.coef is None:
            continue
        m = col.coef.shape[1]
        alpha[:, :, j] = col.coef @ basis[j, :m]
        pred = col.pred[:, :m] if col.invariant else col.pred
        train[:, :, j] = pred @ basis[j, : pred.shape[1]]
    used = [c for c in cols if c.ritz is not None]
    ritz = max(used, key=lambda c: c.ritz.size).ritz if used else np.zeros(0)
    error = max((c.error for c in used), default=0.0)
    return KrylovTrajectory(alpha, train, ritz, steps, float(error))
