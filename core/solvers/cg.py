"""Column-batched preconditioned conjugate gradients on ``(K + shift·I) X = B``.

Every column runs its own CG recurrence (its own step lengths), but all columns that are
still iterating share one kernel product per iteration: ``matmat`` gets an ``n × k_active``
block. A column whose residual reached ``tol`` stops changing.

The reported residual is that of the true system: when the recursively updated residuals say
"converged", ``b − (K + shift·I) x`` is recomputed with one more product, and columns whose true
residual is still above ``tol`` restart from it (residual replacement), so round-off drift in
the recurrence can never make the solver claim an accuracy it does not have.
"""

from __future__ import annotations

import numpy as np

from core.solvers.report import Callback, MatMat, NotConverged, SolveReport, apply, as_block, check_tolerance


def _indefinite(what: str, value: float, column: int, iteration: int) -> ValueError:
    return ValueError(
        f"{what} = {value:.3g} ≤ 0 in column {column} at iteration {iteration}: the kernel matrix "
        "plus shift is not positive definite (an indefinite or singular kernel); set ridge > 0"
    )


def conjugate_gradients(
    matmat: MatMat, b: np.ndarray, *, shift: float = 0.0, preconditioner: MatMat | None = None,
    tol: float = 1e-8, max_iter: int = 1000, x0: np.ndarray | None = None, callback: Callback | None = None,
) -> tuple[np.ndarray, SolveReport]:
    """Solve ``(K + shift·I) X = B`` by preconditioned CG; ``matmat``: ``V ↦ K·V``.

    ``b``: (n,) or (n, k); the answer has ``b``'s shape. ``preconditioner``: ``V ↦ P⁻¹V`` for a
    symmetric positive definite ``P ≈ K + shift·I`` (e.g. :func:`nystrom_preconditioner`).
    Stops when every column has ``‖b − (K + shift·I) x‖ / ‖b‖ ≤ tol`` (a zero column of ``b``
    counts its absolute residual); ``relative_residual`` reports the max of that true residual.
    ``x0``: a starting iterate (warm start, e.g. the last iterate of an interrupted solve).
    ``callback(iteration, x, r)`` after each iteration, with a copy of the iterate (``b``'s shape)
    and the max recursive relative residual ``r``. Raises :class:`NotConverged` (last iterate as
    ``.solution``) after ``max_iter`` iterations, ``ValueError`` when ``pᵀ(K + shift·I)p ≤ 0``
    (the kernel is not positive definite) or a product is not finite. Never returns NaN.
    """
    check_tolerance(tol, max_iter)
    if not (np.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift must be finite and ≥ 0, got {shift!r}")
    b2, was_1d = as_block(b)
    k = b2.shape[1]
    shift = float(shift)

    def a_times(v: np.ndarray) -> np.ndarray:
        out = apply(matmat, v)
        if shift:
            out += shift * v
        return out

    def p_inv(r: np.ndarray) -> np.ndarray:
        return r.copy() if preconditioner is None else apply(preconditioner, r, "the preconditioner")

    def shaped(x: np.ndarray) -> np.ndarray:
        return x[:, 0].copy() if was_1d else x.copy()

    if x0 is None:
        x = np.zeros_like(b2)
        r = b2.copy()
    else:
        if np.shape(x0) != np.shape(b):
            raise ValueError(f"x0 must have the shape of b {np.shape(b)}, got {np.shape(x0)}")
        x = as_block(x0, "x0")[0].copy()
        r = b2 - a_times(x)
    b_norm = np.linalg.norm(b2, axis=0)
    scale = np.where(b_norm > 0, b_norm, 1.0)

    def relative(res: np.ndarray, cols: slice | np.ndarray = slice(None)) -> np.ndarray:
        return np.linalg.norm(res, axis=0) / scale[cols]

    rel = relative(r)
    active = np.flatnonzero(rel > tol)
    z = np.zeros_like(b2)
    p = np.zeros_like(b2)
    rz = np.zeros(k)

    def precondition(cols: np.ndarray, iteration: int) -> np.ndarray:
        """z = P⁻¹r on ``cols``; returns rᵀz there (> 0 for an SPD preconditioner, else ValueError)."""
        z[:, cols] = p_inv(r[:, cols])
        rz_cols = np.einsum("ij,ij->j", r[:, cols], z[:, cols])
        bad = np.flatnonzero(~(rz_cols > 0))
        if bad.size:
            raise ValueError(
                f"the preconditioner is not positive definite (rᵀP⁻¹r = {rz_cols[bad[0]]:.3g} in column "
                f"{int(cols[bad[0]])} at iteration {iteration})"
            )
        return rz_cols

    def restart(cols: np.ndarray, iteration: int) -> None:
        rz[cols] = precondition(cols, iteration)
        p[:, cols] = z[:, cols]

    if active.size:
        restart(active, 0)
    iteration = 0
    while active.size:
        if iteration >= max_iter:
            report = SolveReport(iteration, float(relative(b2 - a_times(x)).max()), False)
            raise NotConverged("conjugate gradients", report, shaped(x), tol)
        iteration += 1
        pa = p[:, active]
        q = a_times(pa)
        pq = np.einsum("ij,ij->j", pa, q)
        bad = np.flatnonzero(~(pq > 0))
        if bad.size:
            raise _indefinite("pᵀ(K + shift·I)p", float(pq[bad[0]]), int(active[bad[0]]), iteration)
        step = rz[active] / pq
        x[:, active] += step * pa
        r[:, active] -= step * q
        rel[active] = relative(r[:, active], active)
        done = rel[active] <= tol
        going = active[~done]
        if going.size:
            rz_new = precondition(going, iteration)
            p[:, going] = z[:, going] + (rz_new / rz[going]) * p[:, going]
            rz[going] = rz_new
        active = going
        if callback is not None:
            callback(iteration, shaped(x), float(rel.max()))
        if not active.size:  # the recurrence claims convergence: check the true residual
            r = b2 - a_times(x)
            rel = relative(r)
            active = np.flatnonzero(rel > tol)
            if active.size:
                restart(active, iteration)
    return shaped(x), SolveReport(iteration, float(rel.max()), True)
