"""Hostile inputs: zero rows, duplicates, 1e±150 scales, d = 1, n = 1, float32; API errors."""

from __future__ import annotations

import numpy as np
import pytest

from core.kernels import (
    RBF,
    Activation,
    Dense,
    Laplace,
    Linear,
    Network,
    Polynomial,
    TwoLayerRelu,
    gram,
    gram_block,
    output_names,
)
from core.kernels.spec import CLOSED_FORM_ACTIVATIONS, NUMERICAL_ACTIVATIONS


def _net(act: str, bias: float | None = 0.1, parameterization: str = "ntk") -> Network:
    layer = Activation(act, negative_slope=0.3)
    return Network(
        (Dense(1.3, bias, width=4), layer, Dense(1.1, bias, width=3), layer, Dense(1.0, bias)),
        parameterization,  # type: ignore[arg-type]
    )


ALL_SPECS = (
    [_net(a) for a in CLOSED_FORM_ACTIVATIONS + NUMERICAL_ACTIVATIONS]
    + [_net("relu", None), _net("erf", 0.0, "standard"), _net("gelu", None, "standard")]
    + [TwoLayerRelu(), Linear(), Polynomial(2, 1.0), RBF(1.0), Laplace(2.0)]
)
IDS = [getattr(s, "layers", None) and f"{s.layers[1].name}-{s.parameterization}-{s.layers[0].b_std}" or type(s).__name__ for s in ALL_SPECS]

BASE = np.random.default_rng(4).standard_normal((5, 3))
HOSTILE = {
    "zero-rows": np.concatenate([BASE, np.zeros((2, 3))]),
    "duplicates": np.concatenate([BASE, BASE[:2], BASE[:1]]),
    "d=1": np.array([[0.5], [-2.0], [0.0], [0.5], [3.0]]),
    "n=1": BASE[:1],
    "n=1,d=1": np.array([[0.7]]),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("spec", ALL_SPECS, ids=IDS)
def test_hostile_inputs_are_finite_with_the_right_dtype(spec, case, dtype) -> None:
    x = HOSTILE[case]
    for args in ((x,), (x, x[::-1].copy())):
        out = gram(spec, *args, dtype=dtype)
        assert list(out) == list(output_names(spec))
        for k in out.values():
            assert k.dtype == dtype and k.shape == (len(x), len(args[-1]))
            assert np.all(np.isfinite(k))


@pytest.mark.parametrize("dtype,scales", [(np.float64, (1e150, 1e-150)), (np.float32, (1e15, 1e-15))])
@pytest.mark.parametrize("spec", ALL_SPECS, ids=IDS)
def test_extreme_scales_are_finite(spec, dtype, scales) -> None:
    for c in scales:
        if isinstance(spec, Polynomial) and c > 1:
            continue  # (c + <x,x'>)² genuinely overflows at that scale
        x = HOSTILE["zero-rows"] * c
        for k in gram(spec, x, dtype=dtype).values():
            assert k.dtype == dtype and np.all(np.isfinite(k)), c


@pytest.mark.parametrize("dtype,scales", [(np.float64, (1e150, 1e-150)), (np.float32, (1e15, 1e-15))])
@pytest.mark.parametrize("act", ["relu", "leaky_relu", "abs", "sign", "identity"])
def test_bias_free_piecewise_linear_networks_are_homogeneous(act, dtype, scales) -> None:
    """Without biases the kernel is homogeneous: K(c·x) = c²·K(x) (sign: degree 0, its derivative kernel is 0) — so huge
    and tiny inputs are computed as accurately as ordinary ones (no overflow of q11·q22)."""
    spec = _net(act, None)
    x = HOSTILE["duplicates"]
    ref = gram(spec, x, dtype=dtype)
    for c in scales:
        out = gram(spec, x * c, dtype=dtype)
        for name in ref:
            factor = 1.0 if act == "sign" else c * c  # sign outputs are scale-free
            rtol = 1e-12 if dtype == np.float64 else 2e-5
            np.testing.assert_allclose(out[name] / factor, ref[name], rtol=rtol, atol=rtol * np.abs(ref[name]).max())


def test_zero_row_is_orthogonal_to_everything() -> None:
    """relu network without bias: a zero input has nngp 0 with everything (angle π/2)."""
    x = HOSTILE["zero-rows"]
    k = gram(_net("relu", None), x)
    np.testing.assert_array_equal(k["nngp"][-2:], 0.0)
    np.testing.assert_array_equal(k["ntk"][-2:], 0.0)
    two = gram(TwoLayerRelu(), x)
    np.testing.assert_array_equal(two["ntk"][-1], 0.0)


def test_inputs_not_representable_in_float32_are_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        gram(Linear(), np.array([[1e39, 0.0]]), dtype=np.float32)
    with pytest.raises(ValueError, match="finite"):
        gram(Linear(), np.array([[np.nan, 0.0]]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: gram(Linear(), np.ones((2, 3)), np.ones((2, 4))), "feature mismatch"),
        (lambda: gram(Linear(), np.ones(3)), "n × d"),
        (lambda: gram(Linear(), np.ones((0, 3))), "at least one row"),
        (lambda: gram(Linear(), np.ones((2, 3)), outputs=["ntk"]), "unknown output"),
        (lambda: gram(TwoLayerRelu(), np.ones((2, 3)), outputs=[]), "at least one"),
        (lambda: gram(Linear(), np.ones((2, 3)), dtype=np.float16), "dtype"),
        (lambda: gram(Linear(), np.ones((2, 3), dtype=complex)), "real"),
        (lambda: gram(Polynomial(0), np.ones((2, 3))), "degree"),
        (lambda: gram(RBF(0.0), np.ones((2, 3))), "lengthscale"),
        (lambda: gram(Network((Dense(0.0),)), np.ones((2, 3))), "w_std"),
        (lambda: gram(Network((Dense(1.0, -1.0),)), np.ones((2, 3))), "b_std"),
        (lambda: gram(Network((Activation("nope"),)), np.ones((2, 3))), "unknown activation"),
        (lambda: gram(Network((Dense(1.0),)), np.ones((2, 3)), engine="gpu"), "engine"),
        (lambda: gram_block(Linear(), np.ones((2, 3)), np.ones((3, 3)), symmetric=True), "same rows"),
    ],
)
def test_invalid_requests_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_dtype_names_and_integer_inputs() -> None:
    k = gram(Linear(), np.arange(6).reshape(2, 3), dtype="float32")["kernel"]
    assert k.dtype == np.float32
    np.testing.assert_array_equal(k, [[5, 14], [14, 50]])
