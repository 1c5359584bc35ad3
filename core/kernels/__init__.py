"""Infinite-width kernels: kernel specifications → Gram matrices (NumPy in, NumPy out).

Public surface::

    gram(spec, x1, x2=None, *, outputs=None, dtype=np.float64, tile=512) -> dict[str, ndarray]
    gram_block(spec, x1_rows, x2_rows, *, outputs=None, dtype=np.float64, symmetric=False)
    layer_widths_applied(spec, width) -> spec
    output_names(spec), default_output(spec), validate_spec(spec)
    warm_up()   # compile / load the fused engine once per process

and the specification dataclasses of ``spec.py``.
"""

from core.kernels.diagonal import gram_diagonal
from core.kernels.gram import gram, gram_block, warm_up
from core.kernels.spec import (
    CLOSED_FORM_ACTIVATIONS,
    NUMERICAL_ACTIVATIONS,
    RBF,
    Activation,
    Dense,
    KernelSpec,
    Laplace,
    Layer,
    Linear,
    Network,
    Polynomial,
    TwoLayerRelu,
    default_output,
    layer_widths_applied,
    output_names,
    validate_spec,
)

__all__ = [
    "CLOSED_FORM_ACTIVATIONS",
    "NUMERICAL_ACTIVATIONS",
    "RBF",
    "Activation",
    "Dense",
    "KernelSpec",
    "Laplace",
    "Layer",
    "Linear",
    "Network",
    "Polynomial",
    "TwoLayerRelu",
    "default_output",
    "gram",
    "gram_block",
    "gram_diagonal",
    "layer_widths_applied",
    "output_names",
    "validate_spec",
    "warm_up",
]
