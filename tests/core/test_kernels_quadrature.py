"""Quadrature activations: against 2-D adaptive integration, an independent trapezoid rule,
Monte Carlo and closed forms; the Hermite series' error bound, fallback and precision."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.special import erf

from core.kernels import Activation, Dense, Network, gram, quadrature
from core.kernels.activations import ACTIVATIONS
from core.kernels.hermite import expansion, hermite_functions, hermite_rule, series_sums
from core.kernels.quadrature import (
    FUNCTIONS,
    LEVELS,
    numerical_diagonal,
    pair_diagonal,
    pair_matrix,
)
from core.kernels.rules import Context, PairState, activation_rule
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


def trapezoid_truth(fn, q11: float, q22: float, rho: float, h: float = 0.04, span: float = 12.0) -> float:
    """``E[fn(u) fn(v)]`` by the tensor trapezoid rule on ``[-span, span]²`` in ``(z1, z2)``: for
    these analytic integrands it converges exponentially (h = 0.04 vs 0.01 agree to ~1e-16),
    and it shares nothing with the code under test."""
    s1, s2 = np.sqrt(q11), np.sqrt(q22)
    sig = np.sqrt(max((1 - rho) * (1 + rho), 0.0))
    z = np.arange(-span, span + h / 2, h)
    w = np.exp(-0.5 * z * z)
    w /= w.sum()
    f1 = fn(s1 * z) * w
    if sig == 0:
        return float(np.sum(f1 * fn(s2 * rho * z)))
    return float(f1 @ (fn(s2 * (rho * z[:, None] + sig * z[None, :])) @ w))


def quad(phi, dphi, q11: float, q22: float, q12: float) -> tuple[float, float]:
    v, dv = pair_matrix(phi, dphi, np.array([q11]), np.array([q22]), np.array([[q12]]))
    return float(v[0, 0]), float(dv[0, 0])


# (q, documented nngp bound, documented derivative bound): entries of the docstring table
DOCUMENTED = {
    "tanh": [(1.0, 3e-15, 5e-15), (4.0, 6e-15, 4e-15)],
    "swish": [(4.0, 1e-14, 5e-15)],
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_documented_accuracy_against_adaptive_integration(name: str) -> None:
    phi, dphi = FUNCTIONS[name]
    for q, bound, dbound in DOCUMENTED[name]:
        for rho in (-0.9, 0.99):
            c = (q, 0.8 * q, rho * np.sqrt(0.8) * q)
            v, dv = quad(phi, dphi, *c)
            assert abs(v - adaptive_truth(phi, *c)) <= 1.5 * bound + 2e-15, (q, rho)
            assert abs(dv - adaptive_truth(dphi, *c)) <= 1.5 * dbound + 2e-15, (q, rho)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_series_against_trapezoid_reference(name: str) -> None:
    """Correlations ±1, 0.999, 0 and others, zero and unequal variances, up to the relaxed top
    order (tanh at q = 16): within 2e-14 (relative to √(E[φ(u)²] E[φ(v)²])) where the
    tolerance is met, within the documented error in the relaxed range."""
    phi, dphi = FUNCTIONS[name]
    q1 = np.array([0.0, 0.3, 1.0, 2.5, 16.0 if name == "tanh" else 9.0])
    q2 = np.array([0.0, 0.7, 1.0, 4.0])
    rho = np.array([[1.0, 0.3, -1.0, 0.999], [1.0, -0.999, 0.5, 0.0], [0.2, 0.9, 1.0, -0.7], [0.999, -1.0, 0.6, 1.0], [1.0, 0.999, -0.5, 0.8]])
    q12 = rho * np.sqrt(np.outer(q1, q2))
    v, dv = pair_matrix(phi, dphi, q1, q2, q12)
    e1, d1 = pair_diagonal(phi, dphi, q1)
    e2, d2 = pair_diagonal(phi, dphi, q2)
    for i in range(len(q1)):
        for j in range(len(q2)):
            r = rho[i, j] if q1[i] * q2[j] > 0 else 0.0
            relaxed = max(q1[i], q2[j]) > 10  # tanh's top order does not meet the tolerance
            for value, fn, scale in ((v, phi, np.sqrt(e1[i] * e2[j])), (dv, dphi, np.sqrt(d1[i] * d2[j]))):
                tol = (1e-9 if relaxed and name == "tanh" else 2e-14) * max(scale, 1e-300)
                truth = trapezoid_truth(fn, q1[i], q2[j], r)
                assert abs(value[i, j] - truth) <= tol + 1e-16, (name, q1[i], q2[j], r, value[i, j] - truth)


def test_diagonal_by_the_one_dimensional_rule() -> None:
    """``E[φ(u)²]`` to ~1e-15, and duplicates (ρ = 1, equal variances) get exactly it (a zero
    variance has ρ = 0 with everything: φ(0)² up to rounding)."""
    for phi, dphi in FUNCTIONS.values():
        q = np.array([0.0, 0.04, 1.0, 3.0, 20.0])
        e, d = pair_diagonal(phi, dphi, q)
        v, dv = pair_matrix(phi, dphi, q, q, np.diag(q))
        np.testing.assert_array_equal(np.diag(v)[1:], e[1:])
        np.testing.assert_array_equal(np.diag(dv)[1:], d[1:])
        assert v[0, 0] == pytest.approx(e[0], rel=1e-15) and dv[0, 0] == pytest.approx(d[0], rel=1e-15)
        for i, qi in enumerate(q[:4]):
            assert e[i] == pytest.approx(trapezoid_truth(phi, qi, qi, 1.0), rel=1e-14, abs=1e-16)
            assert d[i] == pytest.approx(trapezoid_truth(dphi, qi, qi, 1.0), rel=1e-14, abs=1e-16)


def test_series_against_the_two_dimensional_rule() -> None:
    """The previous method (``ORDERS = ()``) agrees within its own documented error."""
    rng = np.random.default_rng(7)
    q1, q2 = rng.uniform(0.1, 4.0, 6), rng.uniform(0.1, 4.0, 5)
    q12 = rng.uniform(-1, 1, (6, 5)) * np.sqrt(np.outer(q1, q2))
    old_bounds = {"tanh": (1e-5, 1e-4), "sigmoid": (1e-10, 1e-9), "softplus": (1e-11, 1e-10), "swish": (1e-9, 1e-8)}
    for name, (phi, dphi) in FUNCTIONS.items():
        new, dnew = pair_matrix(phi, dphi, q1, q2, q12)
        saved = quadrature.ORDERS
        quadrature.ORDERS = ()
        try:
            old, dold = pair_matrix(phi, dphi, q1, q2, q12)
        finally:
            quadrature.ORDERS = saved
        tol, dtol = old_bounds[name]
        np.testing.assert_allclose(new, old, rtol=0, atol=tol)
        np.testing.assert_allclose(dnew, dold, rtol=0, atol=dtol)
        assert not np.array_equal(new, old)


def test_tail_bound_bounds_the_truncation_error() -> None:
    """|Σ_{k>K} c_k(s1) c_k(s2) ρ^k| ≤ t_K(s1) t_K(s2) |ρ|^{K+1} √(E1 E2) at every K, checked
    against the trapezoid reference; and ``series_sums`` stops exactly when it holds."""
    phi = FUNCTIONS["tanh"][0]
    s = np.sqrt(np.array([0.5, 1.5, 3.0]))
    c, t, e = expansion(phi, s, 1536, 512)
    for a, b, rho in ((0, 1, 0.95), (1, 2, -0.8), (2, 2, 0.999), (0, 2, 1.0)):
        truth = trapezoid_truth(phi, s[a] ** 2, s[b] ** 2, rho)
        partial = np.cumsum(c[a] * c[b] * rho ** np.arange(513))
        bound = t[a] * t[b] * abs(rho) ** np.arange(1, 514) * np.sqrt(e[a] * e[b])
        err = np.abs(partial - truth)
        assert np.all(err <= bound + 1e-15), (a, b, rho, np.max(err - bound))
        assert err[8] > 1e-6  # a real test: far from converged after 8 terms
        for tol in (1e-4, 1e-8, 1e-14):
            out, _ = series_sums(np.array([[rho]]), (c[[a]], t[[a]]), (c[[b]], t[[b]]), None, None, tol)
            k = int(np.argmax(t[a] * t[b] * abs(rho) ** np.arange(1, 514) <= tol))
            assert out[0, 0] == partial[k]
            assert abs(out[0, 0] - truth) <= tol * np.sqrt(e[a] * e[b]) + 1e-15


def test_compiled_and_vectorised_entry_loops_agree() -> None:
    phi, dphi = FUNCTIONS["swish"]
    rng = np.random.default_rng(3)
    q1, q2 = rng.uniform(0, 5, 9), rng.uniform(0, 5, 7)
    q12 = np.clip(rng.normal(0, 0.6, (9, 7)), -1, 1) * np.sqrt(np.outer(q1, q2))
    q12[2, 3] = np.sqrt(q1[2] * q2[3])
    compiled = pair_matrix(phi, dphi, q1, q2, q12)
    quadrature.COMPILED = False
    try:
        quadrature._MEMO.clear()
        vectorised = pair_matrix(phi, dphi, q1, q2, q12)
    finally:
        quadrature.COMPILED = True
    for a, b in zip(compiled, vectorised):
        np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-16)


def test_large_variances_fall_back_to_the_two_dimensional_rule() -> None:
    """Points beyond the series (tanh q ≳ 29, any q > 256) use the 2-D rule for all their
    entries, exactly as the previous method; the others keep the series."""
    phi, dphi = FUNCTIONS["tanh"]
    q1 = np.array([0.5, 40.0, 1e3, 1e300])
    q2 = np.array([1.0, 50.0])
    q12 = np.array([[0.3, 1.0], [2.0, -20.0], [5.0, 100.0], [1e140, 1e150]])
    v, dv = pair_matrix(phi, dphi, q1, q2, q12)
    assert np.all(np.isfinite(v)) and np.all(np.isfinite(dv))
    saved = quadrature.ORDERS
    quadrature.ORDERS = ()
    try:
        old, dold = pair_matrix(phi, dphi, q1, q2, q12)
        old_diag = pair_diagonal(phi, dphi, q1)
    finally:
        quadrature.ORDERS = saved
    series = np.zeros((4, 2), bool)
    series[0, 0] = True
    np.testing.assert_array_equal(v[~series], old[~series])
    np.testing.assert_array_equal(dv[~series], dold[~series])
    assert v[0, 0] != old[0, 0]
    new_diag = pair_diagonal(phi, dphi, q1)
    for a, b in zip(new_diag, old_diag):
        np.testing.assert_array_equal(a[1:], b[1:])


def test_float32_and_extremes_are_finite_and_consistent() -> None:
    rng = np.random.default_rng(5)
    q = np.concatenate([rng.uniform(0, 3, 6), [0.0, 1e-30, 1e30]])
    q12 = np.clip(rng.uniform(-1.2, 1.2, (9, 9)), -1, 1) * np.sqrt(np.outer(q, q))
    for phi, dphi in FUNCTIONS.values():
        v64, d64 = pair_matrix(phi, dphi, q, q, q12)
        v32, d32 = pair_matrix(phi, dphi, q.astype(np.float32), q.astype(np.float32), q12.astype(np.float32))
        assert v32.dtype == d32.dtype == np.float32
        for a in (v64, d64, v32, d32):
            assert np.all(np.isfinite(a))
        np.testing.assert_allclose(v32[:8, :8], v64[:8, :8], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(d32[:8, :8], d64[:8, :8], rtol=2e-5, atol=2e-6)
    spec = Network((Dense(1.3, 0.1), Activation("tanh"), Dense(1.1, 0.1), Activation("sigmoid"), Dense(1.0)))
    x = rng.standard_normal((12, 5))
    k64, k32 = gram(spec, x), gram(spec, x, dtype=np.float32)
    for name in k64:
        assert k32[name].dtype == np.float32
        np.testing.assert_allclose(k32[name], k64[name], rtol=1e-5, atol=1e-6)


def test_hermite_rule_and_functions() -> None:
    """Gauss rule exact for moments; Hermite functions orthonormal at high order (no underflow
    of tiny weights times overflowing polynomials)."""
    z, log_w = hermite_rule(200)
    w = np.exp(log_w)
    for k, moment in ((0, 1), (2, 1), (4, 3), (6, 15), (20, 654729075)):
        assert np.sum(w * z**k) == pytest.approx(moment, rel=1e-13)
    _, psi = hermite_functions(1536, 512)
    gram_matrix = psi.T @ psi
    assert np.abs(gram_matrix - np.eye(513)).max() < 1e-13


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_quadrature_matches_monte_carlo(name: str) -> None:
    phi, dphi = activation_functions(Activation(name))
    rng = np.random.default_rng(len(name))
    for c in ((1.0, 1.0, 0.3), (0.5, 2.5, -0.8), (7.0, 5.0, 5.5)):
        u, v = gaussian_pair_samples(*c, 400_000, rng)
        ctx = Context("ntk", lambda state, c=c: (np.array([[c[0]]]), np.array([[c[1]]])), False)
        out = activation_rule(PairState(np.array([[c[2]]]), np.ones((1, 1)), 0, None), Activation(name), ctx)
        for value, samples in (
            (out.nngp[0, 0], phi(u) * phi(v)),
            (out.ntk[0, 0], dphi(u) * dphi(v)),
            (numerical_diagonal(name, np.array([c[0]]))[0], phi(u) ** 2),
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


def test_network_gram_with_series_is_symmetric_and_psd() -> None:
    """Per-entry truncation keeps the Gram matrix PSD to rounding (errors ≤ 1e-14 relative)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 6))
    x[-3:] = x[:3] * np.array([[1.0], [2.0], [-1.0]])  # duplicate, multiple, antipode
    for act in FUNCTIONS:
        spec = Network((Dense(1.5, 0.2), Activation(act), Dense(1.2, None), Activation(act), Dense(1.0, 0.1)))
        for name, k in gram(spec, x, tile=16).items():
            np.testing.assert_array_equal(k, k.T)
            eig = np.linalg.eigvalsh(k)
            assert eig.min() >= -1e-12 * eig.max(), (act, name, eig.min(), eig.max())
