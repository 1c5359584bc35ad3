"""Quadrature activations: against 2-D adaptive integration, Monte Carlo, and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.special import erf

from core.kernels.activations import ACTIVATIONS
from core.kernels.quadrature import FUNCTIONS, LEVELS, apply_numerical, pair_matrix
from core.kernels.spec import Activation
from core.kernels.state import KernelState
from tests.core.kernels_testlib import (
    activation_functions,
    gaussian_pair_samples,
    mean_and_se,
)


def adaptive_truth(phi, q11: float, q22: float, q12: float) -> float:
    s1, s2 = np.sqrt(q11), np.sqrt(q22)
    rho = q12 / (s1 * s2)
    sig = np.sqrt(1 - rho * rho)

    def f(z2: float, z1: float) -> float:
        return phi(s1 * z1) * phi(s2 * (rho * z1 + sig * z2)) * np.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * np.pi)

    return integrate.dblquad(f, -12, 12, -12, 12, epsabs=1e-13, epsrel=1e-12)[0]


def quad(phi, dphi, q11: float, q22: float, q12: float) -> tuple[float, float]:
    v, dv = pair_matrix(phi, dphi, np.array([q11]), np.array([q22]), np.array([[q12]]))
    return float(v[0, 0]), float(dv[0, 0])


# (q, documented nngp bound, documented derivative bound): rows of the docstring table
# (tanh is the hardest function; the others are checked against Monte Carlo below)
DOCUMENTED = {
    "tanh": [(1.0, 1e-6, 2e-5), (4.0, 4e-6, 7e-5)],
    "swish": [(4.0, 3e-11, 3e-10)],
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_documented_accuracy_against_adaptive_integration(name: str) -> None:
    phi, dphi = FUNCTIONS[name]
    for q, bound, dbound in DOCUMENTED[name]:
        for rho in (-0.9, 0.99):
            c = (q, 0.8 * q, rho * np.sqrt(0.8) * q)
            v, dv = quad(phi, dphi, *c)
            assert abs(v - adaptive_truth(phi, *c)) <= 1.5 * bound + 1e-15
            assert abs(dv - adaptive_truth(dphi, *c)) <= 1.5 * dbound + 1e-15


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_quadrature_matches_monte_carlo(name: str) -> None:
    phi, dphi = activation_functions(Activation(name))
    rng = np.random.default_rng(len(name))
    for c in ((1.0, 1.0, 0.3), (0.5, 2.5, -0.8), (7.0, 5.0, 5.5)):
        u, v = gaussian_pair_samples(*c, 400_000, rng)
        state = KernelState(np.array([c[0]]), np.array([c[1]]), np.array([[c[2]]]), np.ones((1, 1)), None)
        out = apply_numerical(state, Activation(name))
        for value, samples in (
            (out.nngp[0, 0], phi(u) * phi(v)),
            (out.ntk[0, 0], dphi(u) * dphi(v)),
            (out.cov1[0], phi(u) ** 2),
        ):
            mean, se = mean_and_se(samples)
            assert abs(value - mean) <= 5 * se + 1e-9


def _closed(name: str, q11: float, q22: float, q12: float) -> tuple[float, float]:
    rule, layer = ACTIVATIONS[name], Activation(name)
    new, dot = rule.pair(rule.aux(np.array([q11]), layer), rule.aux(np.array([q22]), layer), np.array([q12]), layer, True)
    return float(new[0]), float(dot[0])


def test_quadrature_against_closed_forms() -> None:
    """The same rule on functions with closed forms: smooth erf to ~1e-4 relative (worst at
    q = 4), relu (a kink, the rule's weak spot) to a few percent of √(q11 q22)."""
    cases = {
        "erf": (erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-x * x), 2e-4),
        "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float), 5e-2),
    }
    for name, (phi, dphi, tol) in cases.items():
        for q in (0.5, 1.0, 4.0):
            for rho in (-0.9, 0.0, 0.5, 0.99):
                c = (q, 0.8 * q, rho * np.sqrt(0.8) * q)
                v, dv = quad(phi, dphi, *c)
                cv, cdv = _closed(name, *c)
                scale = np.sqrt(c[0] * c[1])
                assert abs(v - cv) <= tol * scale, (name, c, v, cv)
                assert abs(dv - cdv) <= tol * max(abs(cdv), 0.25), (name, c, dv, cdv)


def test_node_levels_depend_on_the_entry_only() -> None:
    """Entries of one block computed alone or with neighbours of other variances agree."""
    phi, dphi = FUNCTIONS["tanh"]
    q1 = np.array([0.5, 1.5, 2.5, 5.0, 20.0])
    q12 = 0.3 * np.sqrt(np.outer(q1, q1))
    full, dfull = pair_matrix(phi, dphi, q1, q1, q12)
    for i in range(len(q1)):
        for j in range(len(q1)):
            v, dv = pair_matrix(phi, dphi, q1[[i]], q1[[j]], q12[[i]][:, [j]])
            assert v[0, 0] == pytest.approx(full[i, j], rel=1e-13)
            assert dv[0, 0] == pytest.approx(dfull[i, j], rel=1e-13)
    assert [n for _, n in LEVELS] == sorted(n for _, n in LEVELS)
