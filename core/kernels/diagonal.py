"""Diagonals ``k(x_i, x_i)`` without the full Gram matrix: O(n·d + n·layers).

Used for predictive variances, where only each test point's prior variance is needed. Network
kernels run the self pass of ``engine.py`` (every example against itself: the same rules at
``q11 = q22 = q12``), which is where the diagonal of :func:`core.kernels.gram` comes from too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from core.kernels.engine import network_diagonal
from core.kernels.geometry import row_sq_norms
from core.kernels.gram import as_inputs, input_ranks
from core.kernels.spec import KernelSpec, Linear, Network, Polynomial, TwoLayerRelu, resolve_outputs, validate_spec
from core.kernels.two_layer import TWO_LAYER_NETWORK


def gram_diagonal(
    spec: KernelSpec, x: Any, *, outputs: Iterable[str] | None = None, dtype: Any = np.float64
) -> dict[str, np.ndarray]:
    """``{name: (n,) array}``: ``k(x_i, x_i)`` for each example of ``x`` (``n × d``; or ``n × L × C``,
    ``n × H × W × C`` for network kernels) and each output."""
    validate_spec(spec)
    wanted = resolve_outputs(spec, outputs)
    a = as_inputs(x, "x", np.dtype(dtype), input_ranks(spec))
    with np.errstate(all="ignore"):  # overflow shows as inf, for the caller to report
        if isinstance(spec, Network):
            nngp, ntk = network_diagonal(spec, a, True)
            parts = {"nngp": nngp, "ntk": ntk}
        elif isinstance(spec, TwoLayerRelu):
            nngp, ntk_a = network_diagonal(TWO_LAYER_NETWORK, a, True, input_scale=1.0)
            parts = {"nngp": nngp, "ntk_b": nngp, "ntk_a": ntk_a, "ntk": ntk_a + nngp}
        elif isinstance(spec, Linear):
            parts = {"kernel": row_sq_norms(a)}
        elif isinstance(spec, Polynomial):
            parts = {"kernel": (spec.c + row_sq_norms(a)) ** spec.degree}
        else:  # RBF, Laplace: k(x, x) = exp(0)
            parts = {"kernel": np.ones(a.shape[0], dtype=a.dtype)}
    return {name: np.array(parts[name], dtype=dtype) for name in wanted}
