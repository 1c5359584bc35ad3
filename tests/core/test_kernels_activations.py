"""Closed-form dual activations against Monte Carlo over the exact Gaussian pair.

For each activation and a few (q11, q22, q12): ``E[φ(u)φ(v)]`` (nngp), ``E[φ'(u)φ'(v)]``
(the NTK multiplier) and ``E[φ(u)²]`` (the diagonal) from 400k samples; tolerance 5 standard
errors (fixed seeds: deterministic).
"""

from __future__ import annotations

import numpy as np
import pytest

from core.kernels.activations import ACTIVATIONS
from core.kernels.rules import Context, PairState, activation_rule
from core.kernels.spec import CLOSED_FORM_ACTIVATIONS, Activation
from tests.core.kernels_testlib import (
    activation_functions,
    gaussian_pair_samples,
    mean_and_se,
)

CONFIGS = [(1.0, 1.0, 0.3), (0.5, 2.0, -0.7), (2.0, 3.0, 2.2), (0.3, 0.4, 0.0), (1.5, 1.5, 1.49)]
LAYERS = [Activation(name) for name in CLOSED_FORM_ACTIVATIONS] + [
    Activation("leaky_relu", negative_slope=-0.5),
    Activation("leaky_relu", negative_slope=2.5),
]
SAMPLES = 400_000


def activate(layer: Activation, q1: np.ndarray, q2: np.ndarray, q12: np.ndarray) -> PairState:
    """The activation's rule on a kernel matrix with row/column variances ``q1``/``q2`` (NTK 1)."""
    ctx = Context("ntk", lambda state: (q1[:, None], q2[None, :]), False)
    return activation_rule(PairState(q12, np.ones_like(q12), 0, None), layer, ctx)


def closed_form(layer: Activation, q11: float, q22: float, q12: float) -> tuple[PairState, float, float]:
    """The pair's state and the two diagonals ``E[φ(u)²]``, ``E[φ(v)²]``."""
    out = activate(layer, np.array([q11]), np.array([q22]), np.array([[q12]]))
    rule = ACTIVATIONS[layer.name]
    return out, float(rule.diagonal(np.array([q11]), layer)[0]), float(rule.diagonal(np.array([q22]), layer)[0])


@pytest.mark.parametrize("layer", LAYERS, ids=lambda a: f"{a.name}({a.negative_slope})")
@pytest.mark.parametrize("config", CONFIGS)
def test_closed_form_matches_monte_carlo(layer: Activation, config: tuple[float, float, float]) -> None:
    q11, q22, q12 = config
    rng = np.random.default_rng(hash((layer.name, layer.negative_slope, config)) % 2**32)
    u, v = gaussian_pair_samples(q11, q22, q12, SAMPLES, rng)
    phi, dphi = activation_functions(layer)
    out, diag1, diag2 = closed_form(layer, q11, q22, q12)
    for value, samples in (
        (out.nngp[0, 0], phi(u) * phi(v)),
        (out.ntk[0, 0], dphi(u) * dphi(v)),
        (diag1, phi(u) ** 2),
        (diag2, phi(v) ** 2),
    ):
        mean, se = mean_and_se(samples)
        assert abs(value - mean) <= 5 * se + 1e-12, (value, mean, se)


def test_sign_derivative_kernel_is_zero_by_convention() -> None:
    out, _, _ = closed_form(Activation("sign"), 1.0, 2.0, 0.5)
    assert out.ntk[0, 0] == 0.0


@pytest.mark.parametrize("layer", LAYERS, ids=lambda a: f"{a.name}({a.negative_slope})")
def test_diagonal_is_the_pair_formula_at_equal_arguments(layer: Activation) -> None:
    """A point with itself: the off-diagonal formula reproduces the diagonal exactly."""
    q = np.array([0.0, 1e-3, 0.7, 1.0, 3.0, 1e4])
    rule = ACTIVATIONS[layer.name]
    nngp, _ = rule.pair(rule.aux(q[:, None], layer), rule.aux(q[None, :], layer), np.diag(q), layer, False)
    np.testing.assert_array_equal(np.diag(nngp), rule.diagonal(q, layer))


def test_zero_variance_is_orthogonal_and_finite() -> None:
    """q11 = 0: angle π/2 (relu derivative kernel 1/4), never NaN."""
    q1, q2, q12 = np.array([0.0]), np.array([2.0]), np.zeros((1, 1))
    for layer in LAYERS:
        out = activate(layer, q1, q2, q12)
        assert np.all(np.isfinite(out.nngp)) and np.all(np.isfinite(out.ntk))
    relu = activate(Activation("relu"), q1, q2, q12)
    assert relu.nngp[0, 0] == 0.0
    assert relu.ntk[0, 0] == pytest.approx(0.25)
