"""core.regression's dual-form fits (fit_cg, fit_nystrom, predict_dual) against numpy.linalg.solve."""

from __future__ import annotations

import numpy as np
import pytest

from core.regression import fit_cg, fit_nystrom, predict_dual
from core.solvers import NotConverged

RNG = np.random.default_rng(4)
X = RNG.normal(size=(50, 2))
XT = RNG.normal(size=(6, 2))
Y = np.stack([np.sin(X[:, 0]), X[:, 1] ** 2], axis=1)


def laplace(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A positive-definite kernel with a slowly decaying spectrum (CG needs many iterations)."""
    return np.exp(-np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)))


K, KT = laplace(X, X), laplace(XT, X)


@pytest.mark.parametrize("rank", [0, 10])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_cg_is_the_exact_fit(rank: int, mode: str) -> None:
    rho = 1e-2 if mode == "absolute" else 1e-2 * np.trace(K) / len(X)
    model = fit_cg(K, Y, ridge=1e-2, ridge_mode=mode, tol=1e-12, preconditioner_rank=rank, seed=1)
    alpha = np.linalg.solve(K + rho * np.eye(len(X)), Y)
    np.testing.assert_allclose(predict_dual(model, KT), KT @ alpha, rtol=1e-8, atol=1e-10)
    assert model.solver == "cg" and model.center_indices is None and model.n_centers == 50
    assert model.ridge_effective == pytest.approx(rho) and model.report.relative_residual <= 1e-12
    assert model.train_residual_norm == pytest.approx(np.linalg.norm(K @ alpha - Y), rel=1e-6)


def test_nystrom_solves_the_nystrom_system_and_one_dimensional_targets_stay_matrices() -> None:
    model = fit_nystrom(K, Y[:, 0], centers=15, ridge=1e-2, tol=1e-12, seed=3)
    idx = model.center_indices
    assert idx is not None and idx.shape == (15,) and len(set(idx.tolist())) == 15
    k_nm = K[:, idx]
    beta = np.linalg.solve(k_nm.T @ k_nm + 1e-2 * K[np.ix_(idx, idx)], k_nm.T @ Y[:, 0])
    assert model.coefficients.shape == (15, 1) and model.y_was_1d
    np.testing.assert_allclose(predict_dual(model, KT[:, idx])[:, 0], KT[:, idx] @ beta, rtol=1e-8, atol=1e-10)
    assert model.seed == 3 and model.solver == "nystrom"


def test_bad_arguments_and_non_convergence() -> None:
    with pytest.raises(ValueError, match="centers"):
        fit_nystrom(K, Y, centers=51)
    with pytest.raises(ValueError, match="centers"):
        fit_nystrom(K, Y, centers=0)
    with pytest.raises(NotConverged, match="relative residual"):
        fit_cg(K, Y, ridge=1e-6, tol=1e-14, max_iter=2)
    model = fit_cg(K, Y, ridge=1e-2)
    with pytest.raises(ValueError, match="kernel_test_centers"):
        predict_dual(model, KT[:, :10])
