"""gram_diagonal equals the diagonal of gram for every kernel kind."""

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
    gram_diagonal,
    output_names,
)

SPECS = [
    Network((Dense(1.4, 0.1), Activation("relu"), Dense(1.2, 0.2), Activation("erf"), Dense(1.0))),
    Network((Dense(1.0, 0.1, width=7), Activation("gelu"), Dense(1.0, 0.0)), "standard"),
    Network((Dense(1.0), Activation("tanh"), Dense(1.0, 0.3))),
    TwoLayerRelu(), Linear(), Polynomial(3, 0.5), RBF(0.7), Laplace(2.0),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_diagonal_matches_gram(spec, dtype) -> None:
    x = np.random.default_rng(0).normal(size=(9, 4))
    x[3] = 0.0
    full = gram(spec, x, dtype=dtype)
    diag = gram_diagonal(spec, x, dtype=dtype)
    assert set(diag) == set(output_names(spec))
    for name, values in diag.items():
        assert values.dtype == dtype and values.shape == (9,)
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(values, np.diagonal(full[name]), rtol=rtol, atol=rtol)
