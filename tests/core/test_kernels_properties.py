"""Property tests (hypothesis): PSD, symmetry, x-against-itself, tiles assemble to the matrix."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

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
)
from core.kernels.spec import CLOSED_FORM_ACTIVATIONS

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dense = st.builds(
    Dense,
    w_std=st.floats(0.3, 2.0),
    b_std=st.one_of(st.none(), st.floats(0.0, 1.0)),
    width=st.integers(1, 50),
)
activation = st.builds(
    Activation, name=st.sampled_from(CLOSED_FORM_ACTIVATIONS), negative_slope=st.floats(-2.0, 2.0)
)


@st.composite
def networks(draw) -> Network:
    depth = draw(st.integers(0, 3))
    layers = []
    for _ in range(depth):
        layers += [draw(dense), draw(activation)]
    layers.append(draw(dense))
    return Network(tuple(layers), draw(st.sampled_from(["ntk", "standard"])))


specs = st.one_of(
    networks(),
    st.just(TwoLayerRelu()),
    st.just(Linear()),
    st.builds(Polynomial, degree=st.integers(1, 4), c=st.floats(0.0, 2.0)),
    st.builds(RBF, lengthscale=st.floats(0.2, 5.0)),
    st.builds(Laplace, lengthscale=st.floats(0.2, 5.0)),
)


@st.composite
def inputs(draw, max_rows: int = 8) -> np.ndarray:
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, 4))
    x = draw(arrays(np.float64, (n, d), elements=st.floats(-3, 3, allow_subnormal=False)))
    if n > 2 and draw(st.booleans()):
        x[-1] = x[0]  # a duplicate row
    return x


@SETTINGS
@given(spec=specs, x=inputs())
def test_symmetric_and_positive_semidefinite(spec, x) -> None:
    for name, k in gram(spec, x).items():
        assert k.shape == (len(x), len(x)) and k.dtype == np.float64
        assert np.all(np.isfinite(k))
        np.testing.assert_array_equal(k, k.T)
        if name == "ntk_a":
            continue  # <x,x'>(π−θ)/2π is PSD too, but not needed by anything; checked via ntk
        eig = np.linalg.eigvalsh(k)
        scale = max(np.abs(eig).max(), 1e-300)
        assert eig.min() >= -1e-9 * scale, (name, eig)


@SETTINGS
@given(spec=specs, x=inputs())
def test_x_against_itself_is_the_symmetric_gram(spec, x) -> None:
    sym = gram(spec, x)
    for other in (x, x.copy()):
        same = gram(spec, x, other)
        for name in sym:
            np.testing.assert_array_equal(same[name], sym[name])


@SETTINGS
@given(spec=specs, x=inputs(max_rows=9), cut=st.integers(1, 8))
def test_tiles_assemble_to_gram(spec, x, cut) -> None:
    cut = min(cut, len(x))
    full = gram(spec, x)
    a, b = x[:cut], x[cut:]
    top = gram_block(spec, a, None, symmetric=True)
    for name, k in full.items():
        np.testing.assert_allclose(top[name], k[:cut, :cut], rtol=1e-9, atol=1e-9 * np.abs(k).max())
    if len(b):
        right = gram_block(spec, a, b)
        bottom = gram_block(spec, b, b, symmetric=True)
        for name, k in full.items():
            tol = {"rtol": 1e-7, "atol": 1e-9 * max(np.abs(k).max(), 1e-300)}
            np.testing.assert_allclose(right[name], k[:cut, cut:], **tol)
            np.testing.assert_allclose(bottom[name], k[cut:, cut:], **tol)
