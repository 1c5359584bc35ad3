"""Infinite-width kernels: kernel specifications → Gram matrices (NumPy in, NumPy out).

Public surface::

    gram(spec, x1, x2=None, *, outputs=None, dtype=np.float64, tile=512) -> dict[str, ndarray]
    gram_block(spec, x1_rows, x2_rows, *, outputs=None, dtype=np.float64, symmetric=False)
    gram_diagonal(spec, x, *, outputs=None, dtype=np.float64) -> dict[str, ndarray]
    layer_widths_applied(spec, width) -> spec
    output_names(spec), default_output(spec), validate_spec(spec)
    warm_up()   # compile / load the fused engine once per process

and the specification dataclasses of ``spec.py``. Inputs are ``n × d``, or ``n × L × C`` /
``n × H × W × C`` (channels last) for network kernels.

Where things live (the data flow, top to bottom):

- ``spec.py``: the frozen dataclasses of kernels and layers; ``registry.py``: every layer kind
  declared once (contract name, fields and ranges, JSON form);
- ``shapes.py``: shapes and Gaussianity through a network, and the refusals (``ValueError``
  naming the layer);
- ``rules.py``: the infinite-width rule of every layer kind on a ``PairState``; ``spatial.py``:
  the linear maps of spatial covariances (conv, pooling, flatten, global pooling);
  ``activations.py`` / ``quadrature.py`` / ``hermite.py`` / ``geometry.py``: the dual activations;
- ``engine.py``: the general engine (self pass, blocks of example pairs, bounded memory);
  ``fused.py``: the compiled per-entry pass for fully connected graphs (the fast path);
  ``gram.py``: the public entry points and the choice of path; ``diagonal.py``: diagonals;
- ``classic.py``, ``two_layer.py``: the classic kernels and the lecture's two-layer ReLU NTK.

Adding a layer
--------------
1. a frozen dataclass in ``spec.py`` and one ``LayerKind`` in ``registry.py`` (fields with
   their ranges: the HTTP schema, the OpenAPI document and ``validate_spec`` follow);
2. its shape/Gaussianity rule in ``shapes.step`` and its infinite-width rule in ``rules.RULES``
   (linear spatial maps in ``spatial.py``); if fully connected networks use it, its opcode in
   ``fused.py`` and ``gram._compile`` (else those networks take the general engine);
3. its finite-width forward/backward in ``core/empirical/layers.py`` (``FINITE``);
4. tests: a Monte Carlo check against finite networks (``tests/core/test_kernels_architectures.py``)
   and, where neural-tangents has the layer, a fixture case (``tests/fixtures/neural_tangents``).
``tests/core/test_layer_registry.py`` fails while a registered kind lacks one of its forms.
"""

from core.kernels.diagonal import gram_diagonal
from core.kernels.gram import gram, gram_block, warm_up
from core.kernels.spec import (
    CLOSED_FORM_ACTIVATIONS,
    NUMERICAL_ACTIVATIONS,
    RBF,
    Activation,
    AvgPool,
    Branches,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalSumPool,
    KernelSpec,
    Laplace,
    Layer,
    LayerNorm,
    Linear,
    Network,
    Polynomial,
    SumPool,
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
    "AvgPool",
    "Branches",
    "Conv",
    "Dense",
    "Flatten",
    "GlobalAvgPool",
    "GlobalSumPool",
    "LayerNorm",
    "SumPool",
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
