"""The lecture's two-layer ReLU kernel: independent formulas, the network relation, Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.kernels import Activation, Dense, Network, TwoLayerRelu, gram
from core.kernels.two_layer import two_layer_reference

RNG = np.random.default_rng(21)
X = RNG.standard_normal((6, 4)) * np.array([[1.0], [2.0], [0.5], [1.0], [3.0], [1.0]])
X[3] = -X[0]  # antipodal pair: θ = π
X[5] = 2 * X[2]  # parallel pair: θ = 0


def arc_cosine(x: np.ndarray, y: np.ndarray, order: int) -> float:
    """Cho & Saul (2009): k_n = ‖x‖^n ‖y‖^n J_n(θ)/π, J_0 = π − θ, J_1 = sin θ + (π − θ) cos θ.

    θ by Kahan's well-conditioned 2·atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖) (arccos loses half the digits
    near 0 and π)."""
    nx, ny = math.sqrt(float(x @ x)), math.sqrt(float(y @ y))
    ux, uy = x / nx, y / ny
    theta = 2 * math.atan2(float(np.linalg.norm(ux - uy)), float(np.linalg.norm(ux + uy)))
    cos = math.cos(theta)
    if order == 0:
        return (math.pi - theta) / math.pi
    return nx * ny * (math.sin(theta) + (math.pi - theta) * cos) / math.pi


def test_two_layer_equals_arc_cosine_kernels() -> None:
    """ntk_a = <x,x'> k0/2, ntk_b = nngp = k1/2, ntk = ntk_a + ntk_b."""
    k = gram(TwoLayerRelu(), X)
    for i in range(len(X)):
        for j in range(len(X)):
            a = float(X[i] @ X[j]) * arc_cosine(X[i], X[j], 0) / 2
            b = arc_cosine(X[i], X[j], 1) / 2
            assert k["ntk_a"][i, j] == pytest.approx(a, rel=1e-12, abs=1e-12)
            assert k["ntk_b"][i, j] == pytest.approx(b, rel=1e-12, abs=1e-12)
            assert k["nngp"][i, j] == pytest.approx(b, rel=1e-12, abs=1e-12)
            assert k["ntk"][i, j] == pytest.approx(a + b, rel=1e-12, abs=1e-12)


def test_output_order_and_separate_arrays() -> None:
    k = gram(TwoLayerRelu(), X)
    assert list(k) == ["ntk", "ntk_a", "ntk_b", "nngp"]
    assert k["ntk_b"] is not k["nngp"]


def test_two_layer_and_ntk_parameterized_network() -> None:
    """Both kernels are homogeneous of degree 2, so two_layer(x) = N(√d x) = d·N(x) and
    N(x) = two_layer(x/√d) for N = [Dense(1), Relu, Dense(1)] in NTK parameterization
    (N starts from <x,x'>/d; the lecture's network has no 1/d)."""
    d = X.shape[1]
    net = Network((Dense(1.0), Activation("relu"), Dense(1.0)))
    two = gram(TwoLayerRelu(), X)
    n_x = gram(net, X)
    n_scaled = gram(net, math.sqrt(d) * X)
    two_shrunk = gram(TwoLayerRelu(), X / math.sqrt(d))
    for a, b in (("ntk", "ntk"), ("nngp", "nngp")):
        np.testing.assert_allclose(two[a], d * n_x[b], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(two[a], n_scaled[b], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(n_x[b], two_shrunk[a], rtol=1e-12, atol=1e-12)


def test_fused_equals_vectorised_reference() -> None:
    y = RNG.standard_normal((3, 4))
    for args in ((X,), (X, y)):
        fused = gram(TwoLayerRelu(), *args)
        ref = two_layer_reference(*args)
        for name in fused:
            np.testing.assert_allclose(fused[name], ref[name], rtol=1e-13, atol=1e-13)


def test_two_layer_matches_a_wide_random_network() -> None:
    """f(x) = m^{-1/2} Σ b_i relu(a_iᵀx): ntk_a = (1/m) Σ b_i² 1[a_iᵀx>0] 1[a_iᵀx'>0] <x,x'>,
    ntk_b = (1/m) Σ relu(a_iᵀx) relu(a_iᵀx'). 20 batches of 20k units; 5 standard errors."""
    rng = np.random.default_rng(3)
    x = X[:4]
    batches = []
    for _ in range(20):
        a = rng.standard_normal((20_000, x.shape[1]))
        b = rng.standard_normal(20_000)
        h = x @ a.T
        act = np.maximum(h, 0)
        ind = (h > 0) * b
        batches.append(((ind @ ind.T) / a.shape[0] * (x @ x.T), (act @ act.T) / a.shape[0]))
    k = gram(TwoLayerRelu(), x)
    for idx, name in enumerate(("ntk_a", "ntk_b")):
        s = np.stack([bt[idx] for bt in batches])
        mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(len(batches))
        assert np.all(np.abs(k[name] - mean) <= 5 * se + 1e-12), name
