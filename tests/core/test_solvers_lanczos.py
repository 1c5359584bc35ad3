"""Tests for core.solvers.lanczos: training trajectories by Lanczos.

References, independent of the Lanczos code: the eigendecomposition formulas of
``core.dynamics.trajectory``; ``scipy.linalg.expm`` through Van Loan's block exponential
(``α(t) = rate ∫₀ᵗ e^{−rate·K_r·s} ds · y``, no inverse) for gradient flow; gradient descent
iterated step by step (``α ← α + rate (y − K_r α)``) and ``numpy.linalg.matrix_power`` for long runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from core.dynamics import trajectory
from core.kernels import gram
from core.solvers import NotConverged, krylov_trajectory
from tests.core.solvers_testlib import RELU3, kernel_problem, single_blas_thread

_one_blas_thread = pytest.fixture(autouse=True, scope="module")(single_blas_thread)


def rel_err(a, ref):
    """Max over times and columns of the relative error (T × n × k arrays)."""
    num = np.linalg.norm(a - ref, axis=1)
    den = np.linalg.norm(ref, axis=1)
    return float(np.max(np.where(den > 0, num / np.where(den > 0, den, 1.0), num)))


def flow_expm(k, y, t, rate, shift):
    """rate ∫₀ᵗ e^{−rate K_r s} ds y: top-right block of expm([[−rate K_r t, t I], [0, 0]])."""
    n = k.shape[0]
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = -rate * (k + shift * np.eye(n)) * t
    block[:n, n:] = np.eye(n) * t
    return rate * scipy.linalg.expm(block)[:n, n:] @ y


def gd_reference(k, y, steps, rate, shift):
    """α after each requested number of steps: iterated for short runs, matrix powers for long ones."""
    n = k.shape[0]
    k_r = k + shift * np.eye(n)
    out = []
    for s in steps:
        if s <= 200:
            a = np.zeros_like(y)
            for _ in range(int(s)):
                a = a + rate * (y - k_r @ a)
        else:  # K_r⁻¹ (I − (I − rate K_r)^s) y, K_r nonsingular here
            a = np.linalg.solve(k_r, y - np.linalg.matrix_power(np.eye(n) - rate * k_r, int(s)) @ y)
        out.append(a)
    return np.stack(out)


@pytest.fixture(scope="module")
def problem():
    k, k_test, *_ = kernel_problem("ntk", 250, 8, n_test=40)
    y = np.sin(np.random.default_rng(5).standard_normal((250, 2)))
    lam = np.linalg.eigvalsh(k)
    return k, k_test, y, lam


@pytest.mark.parametrize("shift", [0.0, 0.05])
@pytest.mark.parametrize("k_out", [1, 2])
def test_flow_equals_eigh_and_expm(problem, shift, k_out):
    k, k_test, y, lam = problem
    y = y[:, :k_out]
    rate = 1.0 / lam[-1]  # times in units of the fastest mode
    times = np.array([0.0, 0.3, 5.0, 200.0, 1e4, 1e7])
    kt = krylov_trajectory(lambda v: k @ v, y, times, method="flow", rate=rate, shift=shift, tol=1e-10)
    eig = trajectory(k, y, list(times), learning_rate=rate, normalization="sum", ridge_effective=shift, kernel_test_train=k_test)
    train_ref = eig.train_predictions.reshape(len(times), 250, k_out)
    test_ref = eig.test_predictions.reshape(len(times), 40, k_out)
    assert kt.coefficients.shape == kt.train_predictions.shape == (len(times), 250, k_out)
    assert rel_err(kt.train_predictions, train_ref) < 1e-6
    assert rel_err(np.einsum("mn,tnk->tmk", k_test, kt.coefficients), test_ref) < 1e-6
    y2 = y.reshape(250, k_out)
    alpha_expm = np.stack([flow_expm(k, y2, t, rate, shift) for t in times[:4]])  # expm is exact to t·λ_max ≈ 200
    assert rel_err(kt.coefficients[:4], alpha_expm) < 1e-6
    assert rel_err(kt.train_predictions[:4], np.einsum("ij,tjk->tik", k, alpha_expm)) < 1e-6
    assert (kt.coefficients[0] == 0).all()
    assert kt.estimated_error <= 1e-10


@pytest.mark.parametrize("shift", [0.0, 0.05])
@pytest.mark.parametrize("k_out", [1, 2])
def test_gd_equals_eigh_and_matrix_powers(problem, shift, k_out):
    k, k_test, y, lam = problem
    y2 = y[:, :k_out]
    rate = 1.5 / (lam[-1] + shift)  # stable: rate·λ_max(K_r) < 2
    steps = np.array([0, 1, 7, 150, 3000, 10**6])
    kt = krylov_trajectory(lambda v: k @ v, y2 if k_out == 2 else y2[:, 0], steps, method="gd", rate=rate, shift=shift, tol=1e-10)
    ref = gd_reference(k, y2, steps[:5], rate, shift)
    assert rel_err(kt.coefficients[:5], ref) < 1e-6
    assert rel_err(kt.train_predictions[:5], np.einsum("ij,tjk->tik", k, ref)) < 1e-6
    assert rel_err(np.einsum("mn,tnk->tmk", k_test, kt.coefficients[:5]), np.einsum("mn,tnk->tmk", k_test, ref)) < 1e-6
    eig = trajectory(k, y2, list(steps), learning_rate=rate, method="gd", normalization="sum", ridge_effective=shift, kernel_test_train=k_test)
    assert rel_err(kt.train_predictions, eig.train_predictions) < 1e-6
    assert rel_err(np.einsum("mn,tnk->tmk", k_test, kt.coefficients), eig.test_predictions) < 1e-6


def test_ritz_values_and_honest_error_estimates(problem):
    k, _, y, lam = problem
    rate = 1.0 / lam[-1]
    times = np.array([1.0, 50.0, 1e3, 1e5])
    eig = trajectory(k, y, list(times), learning_rate=rate, normalization="sum")
    previous_iterations = 0
    for tol in (1e-3, 1e-5, 1e-7, 1e-9):
        kt = krylov_trajectory(lambda v: k @ v, y, times, method="flow", rate=rate, tol=tol)
        actual = max(rel_err(kt.train_predictions, eig.train_predictions), rel_err(kt.coefficients, np.einsum("ij,tjk->tik", np.linalg.pinv(k), eig.train_predictions)))
        assert kt.estimated_error <= tol
        assert actual <= 10 * kt.estimated_error
        assert kt.iterations >= previous_iterations
        previous_iterations = kt.iterations
        ritz = kt.ritz_values
        assert ritz[0] == pytest.approx(lam[-1], rel=1e-9)
        assert (np.diff(ritz) <= 0).all() and ritz[-1] >= lam[0] * (1 - 1e-9)
        assert ritz.size <= kt.iterations


def test_singular_kernel_and_huge_times_stay_finite():
    """Duplicate points make K singular (shift 0): Ritz values at round-off level must give the
    filter's λ → 0 limit (rate·t), not NaN, and still match the eigendecomposition."""
    _, _, x, _ = kernel_problem("ntk", 150, 4)
    xd = np.vstack([x, x[:30]])
    k = gram(RELU3, xd, outputs=["ntk"])["ntk"]
    y = np.cos(np.random.default_rng(6).standard_normal(180))
    lam_max = np.linalg.eigvalsh(k)[-1]
    times = np.array([0.0, 10.0, 1e3, 1e6, 1e12])
    kt = krylov_trajectory(lambda v: k @ v, y, times, method="flow", rate=1.0 / lam_max, tol=1e-10)
    assert np.isfinite(kt.coefficients).all() and np.isfinite(kt.train_predictions).all()
    eig = trajectory(k, y, list(times), learning_rate=1.0 / lam_max, normalization="sum")
    # Beyond rate·t ≈ 10⁶ both answers differ by round-off amplified by t (the null space's
    # eigenvalues are ±1e-14, so e^{−rate·λ·t} is not determined by the matrix): compare up to there.
    assert rel_err(kt.train_predictions[:4, :, 0], eig.train_predictions[:4]) < 1e-6


def test_invariant_subspace_and_zero_columns():
    """y in a 3-dimensional invariant subspace: exact after 3 steps; a zero column stays 0."""
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((60, 60)))
    lam = np.linspace(0.0, 4.0, 60)
    k = (q * lam) @ q.T
    y = np.zeros((60, 2))
    y[:, 1] = q[:, [5, 20, 50]] @ np.array([1.0, -2.0, 0.5])
    kt = krylov_trajectory(lambda v: k @ v, y, np.array([0.5, 3.0]), method="flow", rate=0.7, tol=1e-12)
    assert kt.iterations == 3
    assert (kt.coefficients[:, :, 0] == 0).all()
    eig = trajectory(k, y, [0.5, 3.0], learning_rate=0.7, normalization="sum")
    assert rel_err(kt.train_predictions[:, :, 1:], eig.train_predictions[:, :, 1:]) < 1e-10


def test_not_converged_callback_and_bad_arguments(problem):
    k, _, y, lam = problem
    rate = 1.0 / lam[-1]
    with pytest.raises(NotConverged, match=r"estimated relative error .* after 4 iterations") as info:
        krylov_trajectory(lambda v: k @ v, y, np.array([1e4]), method="flow", rate=rate, tol=1e-10, max_iter=4)
    assert info.value.solution.coefficients.shape == (1, 250, 2) and not info.value.report.converged

    calls = []

    def cancel(i, q, err):
        calls.append((i, q.shape))
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        krylov_trajectory(lambda v: k @ v, y, np.array([1.0]), method="flow", rate=rate, callback=cancel)
    assert calls == [(1, (250, 2)), (2, (250, 2))]

    with pytest.raises(ValueError, match="diverges"):
        krylov_trajectory(lambda v: k @ v, y, np.array([10**5]), method="gd", rate=3.0 / lam[-1], max_iter=300)
    for kwargs, field in (
        ({"rate": 0.0}, "rate"), ({"shift": -1.0}, "shift"), ({"method": "adam"}, "method"),
        ({"times": np.array([-1.0])}, "times"), ({"method": "gd", "times": np.array([1.5])}, "integer"),
    ):
        args = {"method": "flow", "rate": rate, "times": np.array([1.0])} | kwargs
        with pytest.raises(ValueError, match=field):
            krylov_trajectory(lambda v: k @ v, y, **args)
