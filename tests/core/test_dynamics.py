"""Tests for core.dynamics: trajectories from one eigendecomposition, spectra.

References are independent of the eigenbasis code: dense ``scipy.linalg.expm`` (directly, and
through Van Loan's block exponential for the inverse-free integral ``∫₀ᵗ e^{−As} ds``), gradient
descent iterated step by step on explicit features, and ``numpy.linalg`` on dense matrices.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg

from core.dynamics import (
    EigenBasis,
    dual_coefficients,
    normalization_count,
    spectrum,
    time_filter,
    trajectory,
)


def rbf(a: np.ndarray, b: np.ndarray, lengthscale: float = 1.5) -> np.ndarray:
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * lengthscale**2))


def problem(n=12, m=7, k=1, seed=0, duplicate=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3))
    if duplicate:
        x[1] = x[0]
        x[5] = x[4]
    xt = rng.standard_normal((m, 3))
    y = rng.standard_normal(n) if k == 1 else rng.standard_normal((n, k))
    yt = rng.standard_normal(m) if k == 1 else rng.standard_normal((m, k))
    return rbf(x, x), rbf(xt, x), y, yt


def integral_expm(a: np.ndarray, t: float) -> np.ndarray:
    """``∫₀ᵗ e^{−A s} ds`` = top-right block of ``expm([[−A t, I t], [0, 0]])`` (no inverse)."""
    n = a.shape[0]
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = -a * t
    block[:n, n:] = np.eye(n) * t
    return scipy.linalg.expm(block)[:n, n:]


def n_norm(y, normalization):
    return y.size if normalization == "mean" else 1


# --------------------------------------------------------------------------- gradient flow


@pytest.mark.parametrize("ridge", [0.0, 0.1])
@pytest.mark.parametrize("normalization", ["mean", "sum"])
@pytest.mark.parametrize("k", [1, 3])
def test_flow_matches_expm(ridge, normalization, k):
    kxx, ksx, y, yt = problem(k=k)
    eta, times = 0.7, [0.0, 0.3, 2.0, 25.0]
    n = kxx.shape[0]
    kr = kxx + ridge * np.eye(n)
    rate = eta / n_norm(y, normalization)
    tr = trajectory(kxx, y, times, learning_rate=eta, normalization=normalization,
                    ridge_effective=ridge, kernel_test_train=ksx, y_test=yt)
    for i, t in enumerate(times):
        # direct: α(t) = K_r⁻¹ (I − e^{−η K_r t / N}) y
        alpha = np.linalg.solve(kr, (np.eye(n) - scipy.linalg.expm(-rate * t * kr)) @ y)
        np.testing.assert_allclose(tr.train_predictions[i], kxx @ alpha, atol=1e-9)
        np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha, atol=1e-9)
        alpha_vl = rate * integral_expm(rate * kr, t) @ y  # inverse-free: (η/N) ∫₀ᵗ e^{−ηK_r s/N} ds y
        np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha_vl, atol=1e-9)
        n_test = yt.size if normalization == "mean" else 1
        assert tr.test_loss[i] == pytest.approx(((ksx @ alpha - yt) ** 2).sum() / (2 * n_test))
        assert tr.train_loss[i] == pytest.approx(((kxx @ alpha - y) ** 2).sum() / (2 * n_norm(y, normalization)))
    assert tr.train_predictions.shape == (len(times),) + y.shape
    assert tr.test_predictions.shape == (len(times),) + yt.shape


def test_lecture_convention_sum_is_du_dt_minus_ku():
    """"sum" at η = 1: u(t) = e^{−Kt} u(0) with u = f − y, f_0 = 0."""
    kxx, _, y, _ = problem()
    times = [0.0, 0.5, 3.0]
    tr = trajectory(kxx, y, times, normalization="sum")
    for i, t in enumerate(times):
        np.testing.assert_allclose(tr.train_predictions[i] - y, scipy.linalg.expm(-kxx * t) @ (-y), atol=1e-10)


@pytest.mark.parametrize("ridge", [0.0, 0.2])
def test_train_loss_non_increasing_under_flow(ridge):
    kxx, _, y, _ = problem(k=2, seed=3)
    tr = trajectory(kxx, y, np.linspace(0, 60, 120), ridge_effective=ridge)
    assert np.all(np.diff(tr.train_loss) <= 1e-14)
    assert tr.train_loss[0] == pytest.approx((y**2).sum() / (2 * y.size))


def test_infinite_time_is_kernel_ridge_regression():
    kxx, ksx, y, _ = problem(k=2)
    ridge = 0.05
    kr = kxx + ridge * np.eye(kxx.shape[0])
    tr = trajectory(kxx, y, [None, float("inf")], ridge_effective=ridge, kernel_test_train=ksx)
    alpha = np.linalg.solve(kr, y)
    for i in range(2):
        np.testing.assert_allclose(tr.train_predictions[i], kxx @ alpha, atol=1e-10)
        np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha, atol=1e-10)
    assert tr.times == (None, None)
    late = trajectory(kxx, y, [1e7], ridge_effective=ridge, kernel_test_train=ksx)
    np.testing.assert_allclose(late.test_predictions[0], ksx @ alpha, atol=1e-8)


def test_singular_kernel_stays_finite_with_the_right_limits():
    """Duplicate training points, ridge 0: finite at every time; the null direction of K only
    grows α linearly (rate·t), never the predictions; t = ∞ is the pseudo-inverse solution."""
    kxx, ksx, y, _ = problem(duplicate=True)
    assert np.linalg.eigvalsh(kxx)[0] < 1e-12
    n = kxx.shape[0]
    rate = 1.0 / n
    times = [0.0, 0.5, 3.0, 40.0]
    tr = trajectory(kxx, y, times + [1e9, None], kernel_test_train=ksx)
    assert np.isfinite(tr.train_predictions).all() and np.isfinite(tr.test_predictions).all()
    for i, t in enumerate(times):
        alpha = rate * integral_expm(rate * kxx, t) @ y
        np.testing.assert_allclose(tr.train_predictions[i], kxx @ alpha, atol=1e-9)
        np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha, atol=1e-9)
    alpha_pinv = np.linalg.pinv(kxx, rcond=1e-10, hermitian=True) @ y
    for i in (-2, -1):
        np.testing.assert_allclose(tr.train_predictions[i], kxx @ alpha_pinv, atol=1e-7)
        np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha_pinv, atol=1e-7)
    # α's component along the null vector (e_0 − e_1)/√2 grows exactly as rate·t·⟨v, y⟩
    basis = EigenBasis.of(kxx)
    alpha_t = dual_coefficients(basis, y[:, None], [1e6])[0, :, 0]
    null = np.zeros(n)
    null[[0, 1]] = [1 / np.sqrt(2), -1 / np.sqrt(2)]
    assert null @ alpha_t == pytest.approx(rate * 1e6 * (null @ y), rel=1e-6)


# --------------------------------------------------------------------------- gradient descent


@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("normalization", ["mean", "sum"])
@pytest.mark.parametrize("k", [1, 2])
def test_gd_matches_gradient_descent_on_explicit_features(ridge, normalization, k):
    """K = ΦΦᵀ: plain GD on w for (1/2N)(‖Φw − y‖² + ρ‖w‖²) from w = 0 (weight decay ρ/N)."""
    rng = np.random.default_rng(1)
    n, p, m = 9, 20, 4
    phi, phi_t = rng.standard_normal((n, p)) / np.sqrt(p), rng.standard_normal((m, p)) / np.sqrt(p)
    y = rng.standard_normal(n) if k == 1 else rng.standard_normal((n, k))
    big_n = n_norm(y, normalization)
    eta = 0.5 * big_n / (np.linalg.eigvalsh(phi @ phi.T)[-1] + ridge)  # a stable step
    steps = [0, 1, 2, 7, 30]
    tr = trajectory(phi @ phi.T, y, steps, learning_rate=eta, method="gd", normalization=normalization,
                    ridge_effective=ridge, kernel_test_train=phi_t @ phi.T)
    w = np.zeros((p,) + y.shape[1:])
    for s in range(steps[-1] + 1):
        if s in steps:
            i = steps.index(s)
            np.testing.assert_allclose(tr.train_predictions[i], phi @ w, atol=1e-12)
            np.testing.assert_allclose(tr.test_predictions[i], phi_t @ w, atol=1e-12)
        w = w - eta / big_n * (phi.T @ (phi @ w - y) + ridge * w)


def test_gd_dual_recursion_with_singular_kernel():
    """α_{s+1} = α_s + (η/N)(y − K_r α_s), iterated, equals the closed form (duplicates, ridge 0)."""
    kxx, ksx, y, _ = problem(duplicate=True, k=2)
    eta, big_n = 0.9, y.size
    basis = EigenBasis.of(kxx)
    steps = [0, 1, 5, 40]
    closed = dual_coefficients(basis, y, steps, learning_rate=eta, method="gd")
    tr = trajectory(kxx, y, steps, learning_rate=eta, method="gd", kernel_test_train=ksx, basis=basis)
    alpha = np.zeros_like(y)
    for s in range(steps[-1] + 1):
        if s in steps:
            i = steps.index(s)
            np.testing.assert_allclose(closed[i], alpha, atol=1e-10)
            np.testing.assert_allclose(tr.test_predictions[i], ksx @ alpha, atol=1e-10)
        alpha = alpha + eta / big_n * (y - kxx @ alpha)


def test_max_stable_learning_rate():
    kxx, _, y, _ = problem(k=2, seed=4)
    ridge = 0.1
    tr = trajectory(kxx, y, [0], ridge_effective=ridge)
    lam_max = np.linalg.eigvalsh(kxx)[-1] + ridge
    assert tr.max_stable_learning_rate == pytest.approx(2 * y.size / lam_max)
    lr = tr.max_stable_learning_rate
    steps = [0, 100, 3000]
    stable = trajectory(kxx, y, steps, learning_rate=0.99 * lr, method="gd", ridge_effective=ridge)
    unstable = trajectory(kxx, y, steps, learning_rate=1.01 * lr, method="gd", ridge_effective=ridge)
    assert np.isfinite(stable.train_loss).all() and stable.train_loss[-1] <= stable.train_loss[0]
    assert unstable.train_loss[-1] > 1e6 * unstable.train_loss[0]
    with pytest.raises(ValueError, match="diverges"):
        trajectory(kxx, y, [None], learning_rate=1.01 * lr, method="gd", ridge_effective=ridge)
    fixed = trajectory(kxx, y, [None], learning_rate=0.99 * lr, method="gd", ridge_effective=ridge)
    np.testing.assert_allclose(fixed.train_predictions[0], kxx @ np.linalg.solve(kxx + ridge * np.eye(12), y))


# --------------------------------------------------------------------------- the spectral filter


def test_time_filter_is_stable_near_zero_eigenvalues():
    """Against high-precision arithmetic: Decimal (60 digits) for the flow, Fraction for gd."""
    mu = [0.0, 1e-300, 1e-200, 1e-20, 1e-9, 1e-3, 1.0, 1e8]
    rate, times = 0.25, [0.0, 1.0, 1e4, 1e250]
    flow = time_filter(np.array(mu), times, rate=rate, method="flow")
    with localcontext() as ctx:
        ctx.prec = 60
        for i, t in enumerate(times):
            for j, m in enumerate(mu):
                x = Decimal(rate) * Decimal(m) * Decimal(t)
                if x < Decimal("1e-20"):  # series: 60 digits would cancel in 1 − e^{−x}
                    ref = Decimal(rate) * Decimal(t) * (1 - x / 2)
                else:
                    ref = (1 - (-x).exp()) / Decimal(m)
                assert flow[i, j] == pytest.approx(float(ref), rel=1e-13, abs=0)
    steps = [0, 1, 3, 1000]
    gd = time_filter(np.array(mu[:-1]), steps, rate=rate, method="gd")
    for i, s in enumerate(steps):
        for j, m in enumerate(mu[:-1]):
            a = Fraction(rate) * Fraction(m)
            ref = Fraction(rate) * s if a == 0 else (1 - (1 - a) ** s) / Fraction(m)
            assert gd[i, j] == pytest.approx(float(ref), rel=1e-12, abs=0)


def test_time_filter_rejects_bad_times():
    mu = np.ones(3)
    for times, method in (([-1.0], "flow"), ([1.5], "gd"), ([float("nan")], "flow"), ([1], "euler")):
        with pytest.raises(ValueError):
            time_filter(mu, times, rate=1.0, method=method)
    with pytest.raises(ValueError):
        normalization_count(4, "median")


# --------------------------------------------------------------------------- spectra


def test_spectrum_matches_dense_eigenvalues():
    kxx, _, _, _ = problem(n=15)
    ref = np.sort(np.linalg.eigvalsh(kxx))[::-1]
    s = spectrum(kxx)
    np.testing.assert_allclose(s.eigenvalues, ref, rtol=1e-10, atol=1e-14)
    assert s.condition_number == pytest.approx(ref[0] / ref[-1], rel=1e-6)
    assert s.min_eigenvalue == pytest.approx(ref[-1], rel=1e-6)
    assert s.trace == pytest.approx(np.trace(kxx))
    top = spectrum(kxx, top_k=4, basis=EigenBasis.of(kxx))
    np.testing.assert_allclose(top.eigenvalues, ref[:4], rtol=1e-10)
    assert top.condition_number == pytest.approx(s.condition_number, rel=1e-6)


def test_spectrum_of_singular_kernels():
    s = spectrum(np.diag([2.0, 1.0, 0.0]))
    assert s.condition_number == float("inf") and s.min_eigenvalue == 0.0
    np.testing.assert_array_equal(s.eigenvalues, [2.0, 1.0, 0.0])
    assert spectrum(np.zeros((3, 3))).condition_number == float("inf")
    v = np.array([[1.0, 1.0, 1.0]])
    assert spectrum(v.T @ v).min_eigenvalue >= 0.0  # round-off negatives are clipped at 0
    with pytest.raises(ValueError):
        spectrum(np.ones((2, 3)))


def test_trajectory_reports_spectrum_and_shapes():
    kxx, ksx, y, yt = problem(k=1)
    tr = trajectory(kxx, y, [0, 1], kernel_test_train=ksx)
    np.testing.assert_allclose(tr.eigenvalues, np.sort(np.linalg.eigvalsh(kxx))[::-1], atol=1e-12)
    assert tr.train_predictions.shape == (2, 12) and tr.test_predictions.shape == (2, 7)
    assert tr.test_loss is None
    with pytest.raises(ValueError):
        trajectory(kxx, y, [1], y_test=yt)
    with pytest.raises(ValueError):
        trajectory(kxx, y[:5], [1])
