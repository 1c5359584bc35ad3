"""Low-rank (Nyström) preconditioners and the factorizations they share.

Nyström approximation from ``m`` columns ``C = K[:, S]`` of a PSD kernel: ``K̂ = C W⁺ Cᵀ`` with
``W = K[S, S]``. It is computed stably as in the randomized Nyström PCG of Frangella, Tropp
and Udell (2021, "Randomized Nyström preconditioning", Alg. 2.1 with the sketch Ω = I[:, S]):
shift ``C_ν = C + ν I[:, S]`` by ``ν = √n·eps·‖C‖_F``, factor ``W + νI`` by ``eigh`` (dropping
its numerically zero or negative eigenvalues instead of failing), ``F = C_ν Q Θ^{-1/2}``,
thin SVD ``F = U Σ Vᵀ`` and ``K̂ = U Λ̂ Uᵀ`` with ``Λ̂ = Σ² − ν`` (only ``Λ̂ > ν`` is kept).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from core.dynamics.spectral import EPS
from core.solvers.report import MatMat


def choose_centers(n: int, m: int, seed: int) -> np.ndarray:
    """``m`` sorted distinct indices of ``range(n)`` drawn uniformly by ``np.random.default_rng(seed)``."""
    for name, v in (("n", n), ("m", m), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if not 1 <= m <= n:
        raise ValueError(f"the number of centers must be between 1 and n = {n}, got {m}")
    if seed < 0:
        raise ValueError(f"seed must be ≥ 0, got {seed}")
    rng = np.random.default_rng(int(seed))
    return np.sort(rng.choice(int(n), size=int(m), replace=False)).astype(np.int64)


def jittered_cholesky(a: np.ndarray, name: str = "the centers' kernel matrix", *, overwrite: bool = False
                      ) -> tuple[np.ndarray, float]:
    """``(T, δ)``: upper ``T`` with ``TᵀT = a + δI`` for a symmetric PSD ``a`` (m × m).

    ``δ = m·eps·mean(diag a)`` (Falkon's jitter, made relative to the kernel's scale), raised
    tenfold until the factorization succeeds (a near-singular ``a``, e.g. duplicate points).
    ``a`` must be symmetric (one triangle is read). ``overwrite``: a float64 ``a`` may be
    destroyed, and ``T`` is then computed in its memory — one m × m array in all, which is what
    lets M = 10 000 centers fit (each copy is 0.8 GB). ``ValueError`` when ``a`` has a
    non-positive diagonal or is far from PSD.
    """
    a = np.asarray(a, dtype=np.float64)
    m = a.shape[0]
    scale = float(np.trace(a)) / m
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"{name} has no positive diagonal: the kernel is zero or not PSD")
    jitter = m * EPS * scale
    # LAPACK wants column-major: a symmetric C-ordered matrix is its own transpose, a free F-ordered view.
    work = a.T if a.flags.c_contiguous else a
    if not (overwrite and work.flags.f_contiguous):
        work = np.array(work, order="F")
    diagonal = np.diagonal(work).copy()
    for _ in range(14):
        work.flat[:: m + 1] = diagonal + jitter  # the diagonal of an F-ordered square array, in place
        t, info = lapack.dpotrf(work, lower=0, overwrite_a=1, clean=0)  # writes the upper triangle only
        if info == 0:
            for j in range(m - 1):  # zero the strict lower triangle, a column at a time (no m²-sized index)
                t[j + 1:, j] = 0.0
            return t, jitter
        if info < 0:
            raise ValueError(f"LAPACK dpotrf refused argument {-info} for {name}")
        for j in range(1, m):  # restore the overwritten upper triangle from the untouched lower one
            t[:j, j] = t[j, :j]
        work = t
        jitter *= 10.0
    raise ValueError(f"{name} is not positive semi-definite (Cholesky fails even with jitter {jitter:.2g})")


def nystrom_approximation(columns: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(U, λ̂)``: ``K̂ = U diag(λ̂) Uᵀ`` (U n × r orthonormal, λ̂ > 0 descending) from
    ``columns = K[:, centers]`` (module docstring; r ≤ m drops the numerically null part)."""
    c = np.asarray(columns, dtype=np.float64)
    idx = np.asarray(centers)
    if c.ndim != 2 or idx.ndim != 1 or c.shape[1] != idx.size or idx.size == 0:
        raise ValueError(f"columns must be n × m with m = len(centers), got {c.shape} and {idx.shape}")
    n, m = c.shape
    if not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= n or np.unique(idx).size != m:
        raise ValueError(f"centers must be {m} distinct indices in [0, {n})")
    if not np.isfinite(c).all():
        raise ValueError("columns has non-finite entries")
    nu = np.sqrt(n) * EPS * float(np.linalg.norm(c))
    if nu == 0:
        return np.zeros((n, 0)), np.zeros(0)
    y = c.copy()
    y[idx, np.arange(m)] += nu
    w = y[idx]
    theta, q = np.linalg.eigh(0.5 * (w + w.T))
    keep = theta > m * EPS * max(float(theta[-1]), 0.0)
    if not keep.any():
        return np.zeros((n, 0)), np.zeros(0)
    f = y @ (q[:, keep] / np.sqrt(theta[keep]))
    u, sigma, _ = scipy.linalg.svd(f, full_matrices=False, check_finite=False)
    lam = sigma**2 - nu
    keep = lam > nu
    return u[:, keep], lam[keep]


def nystrom_preconditioner(columns: np.ndarray, centers: np.ndarray, shift: float) -> MatMat:
    """``V ↦ P⁻¹V`` for the Nyström preconditioner ``P ≈ K + shift·I`` of Frangella et al.:

    ``P⁻¹ = (λ̂_r + shift) U (Λ̂ + shift·I)⁻¹ Uᵀ + (I − U Uᵀ)`` with ``K̂ = U Λ̂ Uᵀ`` from
    :func:`nystrom_approximation` and λ̂_r its smallest kept eigenvalue — symmetric positive
    definite for every shift ≥ 0 (the kept λ̂ are > 0), so stable as shift → 0 and for a
    near-singular ``K[centers, centers]``. Building it: one thin SVD of an n × m matrix, O(n·m²)
    (about 3 s for 20 000 × 500 on one core); per application O(n·r·k); memory n·r.
    """
    if not (np.isfinite(shift) and shift >= 0):
        raise ValueError(f"shift must be finite and ≥ 0, got {shift!r}")
    u, lam = nystrom_approximation(columns, centers)
    if lam.size == 0:
        return lambda v: np.array(v, dtype=np.float64, copy=True)
    weights = (lam[-1] + shift) / (lam + shift) - 1.0

    def apply(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        coords = u.T @ v
        return v + u @ (weights[:, None] * coords if coords.ndim == 2 else weights * coords)

    return apply
