"""Diagonals ``k(x_i, x_i)`` without the full Gram matrix: O(n·d + n·layers).

Used for predictive variances, where only each test point's prior variance is needed. The
network recursion runs on the diagonal alone (``diagonal_step``: the same formulas at
``q11 = q22 = q12``), so the values equal the diagonal of :func:`core.kernels.gram`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from core.kernels.engine import network_diagonal
from core.kernels.gram import as_inputs, input_ranks
from core.kernels.network import diagonal_step
from core.kernels.shapes import is_chain
from core.kernels.spec import KernelSpec, Linear, Network, Polynomial, TwoLayerRelu, resolve_outputs, validate_spec
from core.kernels.state import row_sq_norms
from core.kernels.two_layer import TWO_LAYER_NETWORK


def _network_diagonal(spec: Network, x: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    cov = row_sq_norms(x) / scale
    ntk = np.zeros_like(cov)
    width: int | None = x.shape[1]
    for position, layer in enumerate(spec.layers):
        cov, ntk, width = diagonal_step(cov, ntk, width, layer, spec.parameterization, position)
    return cov, ntk


def gram_diagonal(
    spec: KernelSpec, x: Any, *, outputs: Iterable[str] | None = None, dtype: Any = np.float64
) -> dict[str, np.ndarray]:
    """``{name: (n,) array}``: ``k(x_i, x_i)`` for each row of ``x`` (n × d) and each output."""
    validate_spec(spec)
    wanted = resolve_outputs(spec, outputs)
    a = as_inputs(x, "x", np.dtype(dtype), input_ranks(spec))
    with np.errstate(all="ignore"):  # overflow shows as inf, for the caller to report
        if isinstance(spec, Network) and (a.ndim > 2 or not is_chain(spec)):
            nngp, ntk = network_diagonal(spec, a, "ntk" in wanted)
            parts = {"nngp": nngp, "ntk": ntk}
        elif isinstance(spec, Network):
            nngp, ntk = _network_diagonal(spec, a, a.shape[1])
            parts = {"nngp": nngp, "ntk": ntk}
        elif isinstance(spec, TwoLayerRelu):
            nngp, ntk_a = _network_diagonal(TWO_LAYER_NETWORK, a, 1.0)
            parts = {"nngp": nngp, "ntk_b": nngp, "ntk_a": ntk_a, "ntk": ntk_a + nngp}
        elif isinstance(spec, Linear):
            parts = {"kernel": row_sq_norms(a)}
        elif isinstance(spec, Polynomial):
            parts = {"kernel": (spec.c + row_sq_norms(a)) ** spec.degree}
        else:  # RBF, Laplace: k(x, x) = exp(0)
            parts = {"kernel": np.ones(a.shape[0], dtype=a.dtype)}
    return {name: np.array(parts[name], dtype=dtype) for name in wanted}
