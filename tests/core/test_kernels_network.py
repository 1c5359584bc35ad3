"""The network recursion: finite random networks (Monte Carlo), fused engine vs reference."""

from __future__ import annotations

import numpy as np
import pytest

from core.kernels import (
    Activation,
    Dense,
    Network,
    gram,
    gram_block,
    layer_widths_applied,
)
from core.kernels.spec import CLOSED_FORM_ACTIVATIONS, NUMERICAL_ACTIVATIONS
from tests.core.kernels_testlib import finite_network_average

X_MC = np.array(
    [[0.3, -1.2, 0.8], [2.0, 0.4, -1.6], [1.1, -0.2, 0.0], [-0.5, 0.9, 1.4]]
)

MC_SPECS = {
    "relu": Network((Dense(1.5, 0.2), Activation("relu"), Dense(1.2, 0.3), Activation("relu"), Dense(1.0, 0.1))),
    "erf-gelu": Network((Dense(1.5, 0.2), Activation("erf"), Dense(1.2), Activation("gelu"), Dense(1.0, 0.1))),
    "tanh-sin": Network((Dense(1.2, 0.2), Activation("tanh"), Dense(1.2, 0.3), Activation("sin"), Dense(1.0, 0.1))),
    "abs-leaky": Network(
        (Dense(1.2, 0.2), Activation("abs"), Dense(1.2, 0.3), Activation("leaky_relu", negative_slope=-0.3), Dense(1.0))
    ),
    "softplus-sign": Network((Dense(1.0, 0.5), Activation("softplus"), Dense(1.3), Activation("sign"), Dense(0.8, 0.2))),
    "standard": Network(
        (Dense(1.5, 0.2, width=1500), Activation("relu"), Dense(1.2, 0.0, width=1000), Activation("erf"), Dense(1.0)),
        parameterization="standard",
    ),
    "standard-swish": Network(
        (Dense(1.0, None, width=1200), Activation("swish"), Dense(1.4, 0.3, width=900), Activation("sigmoid"), Dense(1.0, 0.1)),
        parameterization="standard",
    ),
}


@pytest.mark.parametrize("name", list(MC_SPECS))
def test_network_matches_finite_networks(name: str) -> None:
    """Mean of 10 random networks of width 1500 (NNGP: output covariance given the last
    hidden layer; NTK: Σ_θ ∂f∂f by an explicit backward pass). Tolerance 5 standard errors
    of the mean plus 3/width for the O(1/width) finite-width bias."""
    spec = MC_SPECS[name]
    width = 1500
    nngp, nngp_se, ntk, ntk_se = finite_network_average(spec, X_MC, width, repeats=10, seed=7)
    k = gram(spec, X_MC)
    for exact, mean, se in ((k["nngp"], nngp, nngp_se), (k["ntk"], ntk, ntk_se)):
        tol = 5 * se + 3.0 / width * np.abs(exact).max()
        assert np.all(np.abs(exact - mean) <= tol), (exact, mean, se)


def _spec(act: str, parameterization: str) -> Network:
    layer = Activation(act, negative_slope=0.2)
    return Network(
        (Dense(1.3, 0.2, width=5), layer, Dense(0.9, 0.1, width=4), layer, Dense(1.1, None, width=3), layer, Dense(1.0)),
        parameterization,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", CLOSED_FORM_ACTIVATIONS + ("leaky_relu_negative",))
def test_fused_engine_matches_reference(act: str, parameterization: str, dtype) -> None:
    """Fused (compiled, per entry) == vectorised layer-by-layer reference, tightly."""
    if act == "leaky_relu_negative":
        spec = Network((Dense(1.2, 0.1), Activation("leaky_relu", -1.7), Dense(1.0, 0.3), Activation("leaky_relu", -1.7), Dense(1.0)), parameterization)  # type: ignore[arg-type]
        spec = layer_widths_applied(spec, 6)
    else:
        spec = _spec(act, parameterization)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((37, 6))
    y = rng.standard_normal((11, 6)) * 1.7
    rtol = 2e-13 if dtype == np.float64 else 2e-6
    for args in ((x,), (x, y)):
        fused = gram(spec, *args, dtype=dtype)
        ref = gram(spec, *args, dtype=dtype, engine="reference")
        for name in ("nngp", "ntk"):
            assert fused[name].dtype == dtype
            scale = np.abs(ref[name]).max()
            np.testing.assert_allclose(fused[name], ref[name], rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("act", NUMERICAL_ACTIVATIONS)
def test_hybrid_engine_with_quadrature_layers(act: str) -> None:
    """Quadrature layers between fused segments give the reference result."""
    spec = Network((Dense(1.1, 0.2), Activation("relu"), Dense(1.2, 0.1), Activation(act), Dense(1.0, 0.1), Activation("erf"), Dense(1.0)))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((9, 4))
    for args in ((x,), (x, x[:4] * 0.5)):
        fused = gram(spec, *args, tile=4)
        ref = gram(spec, *args, engine="reference")
        for name in ("nngp", "ntk"):
            np.testing.assert_allclose(fused[name], ref[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_duplicate_points_get_exactly_the_diagonal(dtype) -> None:
    """A repeated row has correlation exactly 1 with its copy at every layer."""
    rng = np.random.default_rng(11)
    base = rng.standard_normal((5, 7))
    x = np.concatenate([base, base[[1, 3]], base[[1]]])
    for act in ("relu", "abs", "leaky_relu", "sign", "erf"):
        spec = Network((Dense(1.4, 0.1), Activation(act), Dense(1.4, 0.1), Activation(act), Dense(1.0, 0.2)))
        k = gram(spec, x, dtype=dtype)
        for name in ("nngp", "ntk"):
            m = k[name]
            for i, j in ((1, 5), (3, 6), (1, 7), (5, 7)):
                if act in ("relu", "abs", "leaky_relu", "sign"):
                    assert m[i, j] == m[i, i] == m[j, j], (act, name, m[i, j], m[i, i])
                else:
                    assert m[i, j] == pytest.approx(m[i, i], rel=1e-5 if dtype == np.float32 else 1e-12)
            if act != "erf":
                np.testing.assert_array_equal(m[1], m[5])


def test_outputs_subset_and_nngp_only() -> None:
    spec = _spec("relu", "ntk")
    x = np.random.default_rng(0).standard_normal((6, 3))
    both = gram(spec, x)
    only = gram(spec, x, outputs=["nngp"])
    assert list(only) == ["nngp"]
    np.testing.assert_array_equal(only["nngp"], both["nngp"])
    assert list(gram(spec, x, outputs=["ntk"])) == ["ntk"]


def test_standard_parameterization_needs_widths() -> None:
    spec = Network((Dense(1.0), Activation("relu"), Dense(1.0)), parameterization="standard")
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match="width"):
        gram(spec, x)
    widened = layer_widths_applied(spec, 64)
    assert widened.layers[0].width == 64 and widened.layers[-1].width is None
    k = gram(widened, x)
    assert np.all(np.isfinite(k["ntk"]))


def test_standard_parameterization_first_layer_uses_input_dimension() -> None:
    """[Dense] alone: ntk = d·<x,x'>/d + bias term = <x, x'> + 1."""
    spec = Network((Dense(1.7, 0.0),), parameterization="standard")
    x = np.random.default_rng(2).standard_normal((4, 5))
    k = gram(spec, x)
    np.testing.assert_allclose(k["ntk"], x @ x.T + 1.0, rtol=1e-13)
    np.testing.assert_allclose(k["nngp"], 1.7**2 * x @ x.T / 5, rtol=1e-13)


def test_empty_network_is_the_input_covariance() -> None:
    x = np.random.default_rng(4).standard_normal((3, 2))
    k = gram(Network(()), x)
    np.testing.assert_allclose(k["nngp"], x @ x.T / 2, rtol=1e-14)
    np.testing.assert_array_equal(k["ntk"], 0.0)


def test_gram_block_off_diagonal_tile() -> None:
    spec = _spec("gelu", "ntk")
    x = np.random.default_rng(8).standard_normal((10, 4))
    full = gram(spec, x)
    tile = gram_block(spec, x[:4], x[4:], outputs=["ntk"], dtype=np.float64)
    np.testing.assert_allclose(tile["ntk"], full["ntk"][:4, 4:], rtol=1e-12)
