"""Kernel ridge regression, GP posterior variance and the infinite-width ensemble variance.

Inputs are Gram matrices computed by the caller (float64; only the lower triangle of a
training kernel is read). Ridge conventions (``ridge_mode``): ``"absolute"`` uses ``K + ridge·I``
(scikit-learn ``KernelRidge(alpha=ridge)``), ``"relative"`` uses ``K + ridge·(trace K / n)·I``
(neural-tangents ``diag_reg``). Times and the loss normalization ``N`` follow
:mod:`core.dynamics` (``rate = η / N``; t = None is the end of training, t = ∞).

A fit factors ``K + ridge·I`` once (Cholesky). An eigendecomposition is computed only when a
finite-time prediction or an NTK-ensemble variance first needs it, and is then kept on the fit
(``fit.basis``) for every later prediction, variance and trajectory on the same model.

The iterative fits (:func:`fit_cg`, :func:`fit_nystrom`) run the solvers of :mod:`core.solvers`
on a dense Gram held in memory (training sets small enough for that; the service's jobs run the same
solvers on a matrix-free operator) and return a :class:`DualFit`: coefficients β on centers,
predictions ``K(x*, centers) β`` at t = ∞ only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from core.dynamics import (
    EigenBasis,
    Method,
    Normalization,
    Time,
    dual_coefficients,
    time_filter,
)
from core.dynamics.spectral import EPS, as_square
from core.dynamics.trajectory import as_targets
from core.solvers import (
    SolveReport,
    choose_centers,
    conjugate_gradients,
    nystrom_preconditioner,
    nystrom_solve,
)

RidgeMode = Literal["absolute", "relative"]
#: How a prediction's variance is computed (see :func:`variance_model`).
VarianceModel = Literal["ntk_ensemble", "gp_posterior", "gp_trained"]
#: Kernel outputs whose predictive variance is the Lee et al. (2019) ensemble of trained networks.
ENSEMBLE_OUTPUTS = ("ntk", "ntk_a")


class SingularKernelError(ValueError):
    """``K + ridge·I`` is (numerically) singular: the system has no trustworthy solution."""


def effective_ridge(kernel: np.ndarray, ridge: float, mode: RidgeMode = "absolute") -> float:
    """The absolute ridge ρ added to the diagonal: ``ridge`` or ``ridge·trace(K)/n``."""
    if not np.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be finite and ≥ 0, got {ridge}")
    if mode == "absolute":
        return float(ridge)
    if mode == "relative":
        k = np.asarray(kernel)
        return float(ridge) * float(np.trace(k)) / k.shape[0]
    raise ValueError(f"ridge_mode must be 'absolute' or 'relative', got {mode!r}")


@dataclass(frozen=True, eq=False)
class KernelRidgeFit:
    """A fitted kernel ridge regression ``α = (K + ρI)⁻¹ y``.

    ``kernel``: the training Gram K (n × n, float64; kept by reference, not copied — do not
    mutate it). ``y``: targets as n × k (``y_was_1d`` remembers a 1-D input). ``cholesky``: the
    ``scipy.linalg.cho_factor`` pair ``(c, lower=True)`` of ``K + ρI`` (only c's lower triangle
    is the factor). ``ridge_effective``: ρ, absolute. ``condition_number``: the 1-norm
    condition number of ``K + ρI`` as estimated by LAPACK ``dpocon`` from the factor (O(n²);
    within a factor n of the 2-norm ``λ_max/λ_min``, usually much closer).
    ``train_residual_norm``: ``‖K α − y‖_F``, the residual of the fitted training predictions
    (not of the linear system; with ridge it is ``≈ ρ‖α‖_F``).
    """

    kernel: np.ndarray
    y: np.ndarray
    y_was_1d: bool
    alpha: np.ndarray
    cholesky: tuple[np.ndarray, bool]
    ridge_effective: float
    condition_number: float
    train_residual_norm: float
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: Any = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def n_train(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.y.shape[1])

    @property
    def basis(self) -> EigenBasis:
        """``EigenBasis.of(kernel)``, computed on first use (thread-safe) and then kept."""
        with self._lock:
            if "basis" not in self._cache:
                self._cache["basis"] = EigenBasis.of(self.kernel)
            return self._cache["basis"]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        object.__setattr__(self, "_lock", threading.Lock())


def _singular(ridge_effective: float) -> SingularKernelError:
    if ridge_effective == 0:
        return SingularKernelError(
            "the kernel matrix is singular (e.g. duplicate training points); set ridge > 0"
        )
    return SingularKernelError(
        f"the kernel matrix plus ridge ({ridge_effective:g} on the diagonal) is numerically "
        "singular; increase ridge"
    )


def fit(
    kernel_train: np.ndarray, y: np.ndarray, *, ridge: float = 0.0, ridge_mode: RidgeMode = "absolute"
) -> KernelRidgeFit:
    """Fit ``α = (K + ρI)⁻¹ y`` by Cholesky (O(n³/3)); y is (n,) or (n, k).

    Raises :class:`SingularKernelError` (a ``ValueError`` whose message names ``ridge``) when
    the Cholesky factorization fails, or when ridge is 0 and the estimated reciprocal condition
    number is ≤ n·eps (``λ_min ≲ n·eps·λ_max``). With ridge > 0 an ill-conditioned K is
    accepted unless ``K + ρI`` is singular to working precision (reciprocal condition ≤ eps).
    """
    k = as_square(kernel_train, "kernel_train")
    n = k.shape[0]
    y2, was_1d = as_targets(y, n)
    rho = effective_ridge(k, ridge, ridge_mode)
    a = k.copy()
    a.flat[:: n + 1] += rho
    a_norm1 = float(np.abs(a).sum(axis=0).max())
    try:
        factor = scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise _singular(rho) from None
    rcond, info = lapack.dpocon(factor[0], a_norm1, uplo="L")
    if info != 0 or not rcond > (n * EPS if rho == 0 else EPS):
        raise _singular(rho)
    alpha = scipy.linalg.cho_solve(factor, y2, check_finite=False)
    return KernelRidgeFit(
        kernel=k,
        y=y2,
        y_was_1d=was_1d,
        alpha=alpha,
        cholesky=factor,
        ridge_effective=rho,
        condition_number=1.0 / rcond,
        train_residual_norm=float(np.linalg.norm(k @ alpha - y2)),
    )


def _cross(kernel_test_train: np.ndarray, n: int, name: str = "kernel_test_train") -> np.ndarray:
    kt = np.asarray(kernel_test_train, dtype=np.float64)
    if kt.ndim != 2 or kt.shape[1] != n:
        raise ValueError(f"{name} must have shape (m, {n}), got {kt.shape}")
    return kt


def predict(
    model: KernelRidgeFit, kernel_test_train: np.ndarray, *, time: Time = None,
    learning_rate: float = 1.0, method: Method = "flow", normalization: Normalization = "mean",
) -> np.ndarray:
    """Mean predictions ``K(x*, X) α`` (m × k) at training time ``time``.

    ``time=None`` (or inf): kernel ridge regression from the Cholesky solve, O(m·n·k). A finite
    time: the linearized network's prediction after training for ``time`` (the same
    ``dual_coefficients`` as :func:`core.dynamics.trajectory`), from ``model.basis``.
    """
    kt = _cross(kernel_test_train, model.n_train)
    if time is None or time == float("inf"):
        return kt @ model.alpha
    alpha_t = dual_coefficients(
        model.basis, model.y, [time], learning_rate=learning_rate, method=method,
        normalization=normalization, ridge_effective=model.ridge_effective,
    )[0]
    return kt @ alpha_t


def gp_variance(model: KernelRidgeFit, kernel_test_train: np.ndarray, kernel_test_diag: np.ndarray) -> np.ndarray:
    """GP posterior variance ``k(x*,x*) − k*ᵀ (K + ρI)⁻¹ k*`` per test point (m,), clipped at 0.

    For a model fitted on the NNGP. From the Cholesky factor: O(m·n²).
    """
    kt = _cross(kernel_test_train, model.n_train)
    diag = np.asarray(kernel_test_diag, dtype=np.float64).reshape(-1)
    if diag.size != kt.shape[0]:
        raise ValueError(f"kernel_test_diag must have {kt.shape[0]} entries, got {diag.size}")
    w = scipy.linalg.solve_triangular(model.cholesky[0], kt.T, lower=True, check_finite=False)
    return np.maximum(diag - np.einsum("ij,ij->j", w, w), 0.0)


def ntk_ensemble_variance(
    ntk_train: np.ndarray, ntk_test_train: np.ndarray, nngp_train: np.ndarray,
    nngp_test_train: np.ndarray, nngp_test_diag: np.ndarray, *, time: Time = None,
    learning_rate: float = 1.0, normalization_n: int, ridge_effective: float = 0.0,
    basis: EigenBasis | None = None,
) -> np.ndarray:
    """Variance (m,) over initializations of the infinite-width network trained by gradient flow
    for ``time`` (Lee et al. 2019, eqs. 15–16), clipped at 0:

    ``Σ(x*) = 𝒦(x*,x*) + Θ(x*,X) T 𝒦 T Θ(X,x*) − 2 Θ(x*,X) T 𝒦(X,x*)``,
    ``T = Θ_r⁻¹ (I − e^{−η Θ_r t / N})`` with ``Θ_r = Θ + ρI`` (``T = Θ_r⁻¹`` at t = ∞), Θ the NTK,
    𝒦 the NNGP. ``normalization_n`` is the loss's N (n·k under "mean", 1 under "sum");
    ``basis``: ``EigenBasis.of(ntk_train)`` if already computed. At t = 0 it is the prior
    ``𝒦(x*,x*)``. Cost O(m·n²) (three m × n × n products) beyond the eigendecomposition.
    """
    theta = as_square(ntk_train, "ntk_train")
    n = theta.shape[0]
    if basis is None:
        basis = EigenBasis.of(theta)
    k_xx = as_square(nngp_train, "nngp_train")
    th_sx = _cross(ntk_test_train, n, "ntk_test_train")
    k_sx = _cross(nngp_test_train, n, "nngp_test_train")
    k_ss = np.asarray(nngp_test_diag, dtype=np.float64).reshape(-1)
    if not (k_xx.shape[0] == n and k_sx.shape[0] == th_sx.shape[0] == k_ss.size):
        raise ValueError("NTK and NNGP blocks must describe the same train and test points")
    if not normalization_n >= 1 or not learning_rate > 0:
        raise ValueError("normalization_n must be ≥ 1 and learning_rate > 0")
    phi = time_filter(basis.eigenvalues + ridge_effective, [time], rate=learning_rate / normalization_n)[0]
    v = basis.eigenvectors
    g = ((th_sx @ v) * phi) @ v.T  # Θ(x*, X) T   (m × n)
    var = k_ss + np.einsum("ij,ij->i", g @ k_xx, g) - 2.0 * np.einsum("ij,ij->i", g, k_sx)
    return np.maximum(var, 0.0)


def variance_model(which: str, time: Time = None) -> VarianceModel:
    """Which predictive variance a model fitted on kernel output ``which`` has at ``time`` (None: t = ∞).

    - ``"ntk_ensemble"`` (``ntk``, ``ntk_a``): the infinite-width ensemble trained by gradient flow
      for ``time``, :func:`ntk_ensemble_variance` with the network's NNGP as 𝒦;
    - ``"gp_posterior"`` (``nngp``, ``ntk_b``, classic kernels at t = ∞): :func:`gp_variance`;
    - ``"gp_trained"`` (the same at a finite time): that prior trained for ``time``, the ensemble
      formula with Θ = 𝒦 = K.
    """
    if which in ENSEMBLE_OUTPUTS:
        return "ntk_ensemble"
    return "gp_posterior" if time is None else "gp_trained"


@dataclass(frozen=True, eq=False)
class DualFit:
    """Kernel regression in dual form on ``m`` centers: ``f(x) = K(x, C) β`` (t = ∞ only).

    ``solver``: how it was fitted. ``coefficients``: β, m × k float64. ``center_indices``: the
    centers' sorted row indices in the training set, or None when the centers are all ``n_train``
    training points in order (cg). ``seed``: what drew the centers (nystrom) or the preconditioner's
    points (cg).
    ``ridge_effective``: ρ, absolute. ``train_residual_norm``: ``‖K_nC β − y‖_F`` on the training
    points. ``report``: the iterative solver's iterations and relative residual (of the system it
    ran: ``(K + ρI) α = y`` for cg, ``(K_nMᵀK_nM + ρK_MM) β = K_nMᵀ y`` for nystrom).
    """

    solver: Literal["cg", "nystrom"]
    coefficients: np.ndarray
    center_indices: np.ndarray | None
    seed: int
    n_train: int
    y_was_1d: bool
    ridge_effective: float
    train_residual_norm: float
    report: SolveReport

    @property
    def n_centers(self) -> int:
        return int(self.coefficients.shape[0])

    @property
    def n_outputs(self) -> int:
        return int(self.coefficients.shape[1])


def fit_cg(
    kernel_train: np.ndarray, y: np.ndarray, *, ridge: float = 0.0, ridge_mode: RidgeMode = "absolute",
    tol: float = 1e-8, max_iter: int = 1000, preconditioner_rank: int = 0, seed: int = 0,
) -> DualFit:
    """``α = (K + ρI)⁻¹ y`` by conjugate gradients (the exact fit, to relative residual ``tol``).

    The preconditioner is the Nyström approximation on ``min(n, preconditioner_rank)`` training
    points drawn with ``seed`` (0: none). Raises ``core.solvers.NotConverged`` (a ``ValueError``
    reporting the residual reached) when ``tol`` is not reached within ``max_iter``.
    """
    k = as_square(kernel_train, "kernel_train")
    n = k.shape[0]
    y2, was_1d = as_targets(y, n)
    rho = effective_ridge(k, ridge, ridge_mode)
    rank = min(n, int(preconditioner_rank))
    preconditioner = None
    if rank > 0:
        idx = choose_centers(n, rank, seed)
        preconditioner = nystrom_preconditioner(k[:, idx], idx, rho)
    alpha, report = conjugate_gradients(lambda v: k @ v, y2, shift=rho, preconditioner=preconditioner,
                                        tol=tol, max_iter=max_iter)
    return DualFit(solver="cg", coefficients=alpha, center_indices=None, seed=seed, n_train=n, y_was_1d=was_1d,
                   ridge_effective=rho,
                   train_residual_norm=float(np.linalg.norm(k @ alpha - y2)), report=report)


def fit_nystrom(
    kernel_train: np.ndarray, y: np.ndarray, *, centers: int, ridge: float = 0.0,
    ridge_mode: RidgeMode = "absolute", tol: float = 1e-8, max_iter: int = 1000, seed: int = 0,
) -> DualFit:
    """Nyström kernel ridge regression on ``centers`` training points drawn uniformly with ``seed``
    (Falkon): ``(K_nMᵀ K_nM + ρ K_MM) β = K_nMᵀ y`` by preconditioned CG. With ``centers = n`` it is
    the exact fit (β = α). ρ is the ridge of the full problem (relative mode: ``ridge·trace(K)/n``).
    """
    k = as_square(kernel_train, "kernel_train")
    n = k.shape[0]
    y2, was_1d = as_targets(y, n)
    if not 1 <= centers <= n:
        raise ValueError(f"centers must be between 1 and n = {n}, got {centers}")
    rho = effective_ridge(k, ridge, ridge_mode)
    idx = choose_centers(n, centers, seed)
    k_nm = k[:, idx]
    beta, report = nystrom_solve(lambda v: k_nm.T @ (k_nm @ v), k_nm.T @ y2, k_nm[idx], rho, n,
                                 tol=tol, max_iter=max_iter, overwrite_k_mm=True)
    beta = np.asarray(beta, dtype=np.float64).reshape(centers, -1)
    return DualFit(solver="nystrom", coefficients=beta, center_indices=idx, seed=seed, n_train=n, y_was_1d=was_1d,
                   ridge_effective=rho,
                   train_residual_norm=float(np.linalg.norm(k_nm @ beta - y2)), report=report)


def predict_dual(model: DualFit, kernel_test_centers: np.ndarray) -> np.ndarray:
    """Mean predictions ``K(x*, C) β`` (m_test × k) of a dual model at t = ∞."""
    return _cross(kernel_test_centers, model.n_centers, "kernel_test_centers") @ model.coefficients
