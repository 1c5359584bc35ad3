"""Classic kernels against direct loops and scipy.spatial.distance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from core.kernels import RBF, Laplace, Linear, Polynomial, gram, gram_block

RNG = np.random.default_rng(12)
X = RNG.standard_normal((9, 5))
Y = RNG.standard_normal((4, 5)) * 2.0


@pytest.mark.parametrize("y", [None, Y], ids=["sym", "cross"])
def test_linear_and_polynomial_by_loops(y) -> None:
    other = X if y is None else y
    lin = gram(Linear(), X, y)["kernel"]
    poly = gram(Polynomial(degree=3, c=0.5), X, y)["kernel"]
    for i in range(len(X)):
        for j in range(len(other)):
            dot = sum(float(a) * float(b) for a, b in zip(X[i], other[j]))
            assert lin[i, j] == pytest.approx(dot, rel=1e-12, abs=1e-12)
            assert poly[i, j] == pytest.approx((0.5 + dot) ** 3, rel=1e-12, abs=1e-11)


@pytest.mark.parametrize("y", [None, Y], ids=["sym", "cross"])
@pytest.mark.parametrize("ell", [0.3, 1.0, 7.5])
def test_rbf_and_laplace_by_scipy(y, ell: float) -> None:
    other = X if y is None else y
    dist = cdist(X, other)
    np.testing.assert_allclose(gram(RBF(ell), X, y)["kernel"], np.exp(-(dist**2) / (2 * ell**2)), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gram(Laplace(ell), X, y)["kernel"], np.exp(-dist / ell), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_duplicates_keep_relative_accuracy(dtype) -> None:
    """Distances of nearly equal, large points are recomputed directly (no cancellation)."""
    base = RNG.standard_normal((3, 4)) * 1e3
    x = np.concatenate([base, base + 1e-3]).astype(dtype)
    dist = cdist(x.astype(np.float64), x.astype(np.float64))
    k = gram(Laplace(1e-3), x, dtype=dtype)["kernel"]
    assert k.dtype == dtype
    np.testing.assert_allclose(k, np.exp(-dist / 1e-3), rtol=1e-3 if dtype == np.float32 else 1e-9, atol=1e-30)
    np.testing.assert_array_equal(np.diag(k), 1.0)
    dup = gram(RBF(0.1), np.concatenate([base, base]).astype(dtype), dtype=dtype)["kernel"]
    np.testing.assert_array_equal(dup[:3, 3:], np.eye(3) + (dup[:3, 3:] * (1 - np.eye(3))))


def test_extreme_lengthscales_are_finite() -> None:
    for ell in (1e-300, 1e300):
        for spec in (RBF(ell), Laplace(ell)):
            k = gram(spec, X)["kernel"]
            assert np.all(np.isfinite(k))
            np.testing.assert_array_equal(np.diag(k), 1.0)


def test_classic_blocks_assemble() -> None:
    k = gram(RBF(1.3), X)["kernel"]
    top = gram_block(RBF(1.3), X[:4], None, symmetric=True)["kernel"]
    right = gram_block(RBF(1.3), X[:4], X[4:])["kernel"]
    np.testing.assert_allclose(top, k[:4, :4], rtol=1e-14)
    np.testing.assert_allclose(right, k[:4, 4:], rtol=1e-13)
