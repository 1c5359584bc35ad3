"""Tests for core.regression: kernel ridge fits, predictions at any time, posterior variances.

References: scikit-learn ``KernelRidge(kernel="precomputed")``, ``numpy.linalg.solve`` /
``inv`` on dense matrices, ``scipy.linalg.expm`` for finite training times, and the two-layer
ReLU NTK / NNGP pair written out here from the contract's closed form.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg
from sklearn.kernel_ridge import KernelRidge

from core import dynamics
from core.regression import (
    SingularKernelError,
    effective_ridge,
    fit,
    gp_variance,
    ntk_ensemble_variance,
    predict,
    variance_model,
)


def rbf(a, b, lengthscale=1.5):
    return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * lengthscale**2))


def two_layer_relu(a, b):
    """(ntk, nngp) of the contract's two_layer_relu kernel (ntk = ntk_a + nngp)."""
    dot = a @ b.T
    na, nb = np.linalg.norm(a, axis=1)[:, None], np.linalg.norm(b, axis=1)[None, :]
    theta = np.arctan2(np.sqrt(np.maximum((na * nb) ** 2 - dot**2, 0.0)), dot)
    nngp = na * nb * ((np.pi - theta) * np.cos(theta) + np.sin(theta)) / (2 * np.pi)
    return dot * (np.pi - theta) / (2 * np.pi) + nngp, nngp


def data(n=15, m=6, k=1, seed=0):
    rng = np.random.default_rng(seed)
    x, xt = rng.standard_normal((n, 4)), rng.standard_normal((m, 4))
    y = rng.standard_normal(n) if k == 1 else rng.standard_normal((n, k))
    return x, xt, y


# --------------------------------------------------------------------------- ridge and fit


@pytest.mark.parametrize("ridge", [1e-3, 0.3])
@pytest.mark.parametrize("k", [1, 3])
def test_predictions_match_scikit_learn(ridge, k):
    x, xt, y = data(k=k)
    model = fit(rbf(x, x), y, ridge=ridge)
    ref = KernelRidge(alpha=ridge, kernel="precomputed").fit(rbf(x, x), y).predict(rbf(xt, x))
    mean = predict(model, rbf(xt, x))
    assert mean.shape == (6, k)
    np.testing.assert_allclose(mean, ref.reshape(6, k), atol=1e-10)
    assert (model.n_train, model.n_outputs, model.y_was_1d) == (15, k, k == 1)


def test_relative_ridge_is_trace_scaled():
    x, xt, y = data(k=2)
    kxx = 3.0 * rbf(x, x)
    assert effective_ridge(kxx, 0.1, "relative") == pytest.approx(0.1 * np.trace(kxx) / 15)
    assert effective_ridge(kxx, 0.1, "absolute") == 0.1
    model = fit(kxx, y, ridge=0.1, ridge_mode="relative")
    alpha = np.linalg.solve(kxx + 0.1 * np.trace(kxx) / 15 * np.eye(15), y)
    np.testing.assert_allclose(model.alpha, alpha, atol=1e-10)
    np.testing.assert_allclose(predict(model, 3.0 * rbf(xt, x)), 3.0 * rbf(xt, x) @ alpha, atol=1e-10)
    for bad in ((0.1, "median"), (-1.0, "absolute"), (float("nan"), "absolute")):
        with pytest.raises(ValueError):
            effective_ridge(kxx, *bad)


def test_fit_reports_residual_and_condition_number():
    x, _, y = data(k=2)
    kxx, ridge = rbf(x, x), 0.01
    model = fit(kxx, y, ridge=ridge)
    assert model.train_residual_norm == pytest.approx(np.linalg.norm(kxx @ model.alpha - y))
    kr = kxx + ridge * np.eye(15)
    cond1, cond2 = np.linalg.cond(kr, 1), np.linalg.cond(kr, 2)
    assert cond1 / 3 <= model.condition_number <= cond1 * (1 + 1e-8)  # an estimate, never above
    assert cond2 / 15 <= model.condition_number <= 15 * cond2


def test_singular_kernel_is_refused_at_ridge_zero_only():
    x, _, y = data()
    x[3] = x[7]  # duplicate training points: K is exactly singular
    kxx = rbf(x, x)
    with pytest.raises(SingularKernelError, match="ridge") as err:
        fit(kxx, y)
    assert isinstance(err.value, ValueError)
    for singular in (np.zeros((4, 4)), np.ones((4, 4))):
        with pytest.raises(SingularKernelError, match="ridge"):
            fit(singular, np.ones(4))
    model = fit(kxx, y, ridge=1e-6)
    np.testing.assert_allclose(model.alpha[:, 0], np.linalg.solve(kxx + 1e-6 * np.eye(15), y), rtol=1e-6)
    # ...while the dynamics at ridge 0 stay finite on the same kernel (tests/core/test_dynamics.py)
    assert np.isfinite(dynamics.trajectory(kxx, y, [1.0, None]).train_predictions).all()


def test_ill_conditioned_kernel_succeeds_with_a_small_ridge():
    x = np.linspace(0, 1, 40)[:, None]
    kxx = rbf(x, x, lengthscale=2.0)  # κ(K) beyond 1/eps
    y = np.sin(3 * x[:, 0])
    with pytest.raises(SingularKernelError):
        fit(kxx, y)
    model = fit(kxx, y, ridge=1e-9)
    assert model.condition_number > 1e8
    kr = kxx + 1e-9 * np.eye(40)
    assert np.linalg.norm(kr @ model.alpha[:, 0] - y) <= 1e-6 * np.linalg.norm(y)


# --------------------------------------------------------------------------- finite training time


@pytest.mark.parametrize("ridge", [0.0, 0.05])
@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_prediction_at_finite_time_is_the_trajectory(ridge, normalization):
    x, xt, y = data(k=2)
    kxx, ksx = rbf(x, x), rbf(xt, x)
    model = fit(kxx, y, ridge=ridge)
    eta, big_n = 0.8, (y.size if normalization == "mean" else 1)
    kr = kxx + ridge * np.eye(15)
    tr = dynamics.trajectory(kxx, y, [0.5, 4.0], learning_rate=eta, normalization=normalization,
                             ridge_effective=ridge, kernel_test_train=ksx, basis=model.basis)
    for i, t in enumerate([0.5, 4.0]):
        mean = predict(model, ksx, time=t, learning_rate=eta, normalization=normalization)
        ref = ksx @ np.linalg.solve(kr, (np.eye(15) - scipy.linalg.expm(-eta * t / big_n * kr)) @ y)
        np.testing.assert_allclose(mean, ref, atol=1e-9)
        np.testing.assert_allclose(mean, tr.test_predictions[i], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(predict(model, ksx, time=1e9), predict(model, ksx), atol=1e-8)
    np.testing.assert_array_equal(predict(model, ksx, time=float("inf")), predict(model, ksx))


# --------------------------------------------------------------------------- variances


@pytest.mark.parametrize("ridge", [1e-4, 0.2])
def test_gp_variance_matches_direct_formula(ridge):
    x, xt, y = data()
    xt[0] = x[2]  # a training point: variance ≈ 0, never negative
    _, kxx = two_layer_relu(x, x)
    _, ksx = two_layer_relu(xt, x)
    kss = np.diag(two_layer_relu(xt, xt)[1])
    model = fit(kxx, y, ridge=ridge)
    var = gp_variance(model, ksx, kss)
    ref = kss - np.einsum("ij,jk,ik->i", ksx, np.linalg.inv(kxx + ridge * np.eye(15)), ksx)
    np.testing.assert_allclose(var, np.maximum(ref, 0.0), atol=1e-9)
    assert var.shape == (6,) and (var >= 0).all()


def ensemble_reference(theta, th_sx, kxx, k_sx, kss, t, rate, ridge):
    """Lee et al. (2019) eq. 16 with dense matrices: T = Θ_r⁻¹(I − expm(−rate·Θ_r·t))."""
    n = theta.shape[0]
    theta_r = theta + ridge * np.eye(n)
    decay = np.zeros((n, n)) if t is None else scipy.linalg.expm(-rate * t * theta_r)
    tt = np.linalg.inv(theta_r) @ (np.eye(n) - decay)
    cov = kss + th_sx @ tt @ kxx @ tt.T @ th_sx.T - th_sx @ tt @ k_sx.T - k_sx @ tt.T @ th_sx.T
    return np.diag(cov)


@pytest.mark.parametrize("ridge", [0.0, 0.05])
@pytest.mark.parametrize("normalization_n", [15, 1])
def test_ntk_ensemble_variance_matches_dense_expm(ridge, normalization_n):
    x, xt, _ = data()
    theta, kxx = two_layer_relu(x, x)
    th_sx, k_sx = two_layer_relu(xt, x)
    _, k_ss_full = two_layer_relu(xt, xt)
    kss = np.diag(k_ss_full)
    basis = dynamics.EigenBasis.of(theta)
    eta = 0.6
    for t in (0.0, 0.7, 5.0, None):
        var = ntk_ensemble_variance(theta, th_sx, kxx, k_sx, kss, time=t, learning_rate=eta,
                                    normalization_n=normalization_n, ridge_effective=ridge, basis=basis)
        ref = ensemble_reference(theta, th_sx, kxx, k_sx, kss, t, eta / normalization_n, ridge)
        np.testing.assert_allclose(var, np.maximum(ref, 0.0), atol=1e-8)
        assert (var >= 0).all()
        if t == 0.0:
            np.testing.assert_array_equal(var, kss)  # untrained: the NNGP prior


def test_nngp_ensemble_at_infinity_is_the_gp_posterior():
    """With Θ = 𝒦 (only the readout trained) and ridge 0, eq. 16 at t = ∞ is the GP posterior."""
    x, xt, y = data()
    _, kxx = two_layer_relu(x, x)
    _, ksx = two_layer_relu(xt, x)
    kss = np.diag(two_layer_relu(xt, xt)[1])
    ens = ntk_ensemble_variance(kxx, ksx, kxx, ksx, kss, time=None, normalization_n=15)
    np.testing.assert_allclose(ens, gp_variance(fit(kxx, y), ksx, kss), atol=1e-7)


# --------------------------------------------------------------------------- reuse


def test_one_factorization_serves_every_later_call(monkeypatch):
    calls = {"eigh": 0, "cho_factor": 0}

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(np.linalg, "eigh", counting("eigh", np.linalg.eigh))
    monkeypatch.setattr(scipy.linalg, "cho_factor", counting("cho_factor", scipy.linalg.cho_factor))
    x, xt, y = data(k=2)
    theta, kxx = two_layer_relu(x, x)
    th_sx, k_sx = two_layer_relu(xt, x)
    model = fit(theta, y, ridge=0.01)
    predict(model, th_sx)
    assert calls == {"eigh": 0, "cho_factor": 1}  # t = ∞ needs only the Cholesky factor
    for t in (0.5, 2.0, 7.0):
        predict(model, th_sx, time=t)
    for t in (0.5, None):
        ntk_ensemble_variance(theta, th_sx, kxx, k_sx, np.ones(6), time=t, normalization_n=30,
                              ridge_effective=model.ridge_effective, basis=model.basis)
    dynamics.trajectory(theta, y, [1.0, 2.0], kernel_test_train=th_sx, basis=model.basis,
                        ridge_effective=model.ridge_effective)
    dynamics.spectrum(theta, basis=model.basis)
    assert calls == {"eigh": 1, "cho_factor": 1}
    clone = pickle.loads(pickle.dumps(model))  # the lock is not pickled; the cached basis is
    np.testing.assert_array_equal(predict(clone, th_sx, time=0.5), predict(model, th_sx, time=0.5))
    assert calls["eigh"] == 1


@pytest.mark.parametrize(("which", "time", "expected"), [
    ("ntk", None, "ntk_ensemble"), ("ntk_a", 3.0, "ntk_ensemble"),
    ("nngp", None, "gp_posterior"), ("ntk_b", None, "gp_posterior"), ("kernel", None, "gp_posterior"),
    ("nngp", 0.0, "gp_trained"), ("kernel", 10.0, "gp_trained"),
])
def test_variance_model_by_output_and_time(which, time, expected) -> None:
    assert variance_model(which, time) == expected
