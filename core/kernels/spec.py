"""Kernel specifications: plain, immutable descriptions of what to compute.

These mirror the ``kernel`` field of the HTTP contract (``api-v1.md``) without any
dependency on the web layer; ``service`` validates requests and builds these.

Conventions (neural-tangents / Lee et al. 2018, Jacot et al. 2018):
- a ``Network`` starts from the input covariance ``<x, x'> / d`` and NTK 0;
- ``Dense`` in NTK parameterization: ``nngp' = w_std² nngp + b_std²``,
  ``ntk' = nngp' + w_std² ntk``;
- in standard parameterization (Sohl-Dickstein et al. 2020):
  ``ntk' = fan_in·nngp + w_std² ntk + [1 if the layer has a bias]`` with the pre-layer nngp,
  fan_in = d for the first dense layer, the previous dense layer's ``width`` after that;
- an ``Activation`` maps nngp to ``E[φ(u)φ(v)]`` and multiplies ntk by ``E[φ'(u)φ'(v)]``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal, TypeAlias

#: Activations with a closed-form dual kernel.
CLOSED_FORM_ACTIVATIONS = ("relu", "leaky_relu", "abs", "erf", "sign", "gelu", "sin", "identity")
#: Named elementwise functions computed by Gauss–Hermite quadrature.
NUMERICAL_ACTIVATIONS = ("tanh", "sigmoid", "softplus", "swish")

Parameterization: TypeAlias = Literal["ntk", "standard"]


@dataclass(frozen=True, slots=True)
class Dense:
    """Fully connected layer. ``b_std=None``: no bias parameter. ``width``: output width."""

    w_std: float = 1.0
    b_std: float | None = None
    width: int | None = None


@dataclass(frozen=True, slots=True)
class Activation:
    """Elementwise nonlinearity ``name`` (one of the two tuples above).

    ``negative_slope`` is used by ``leaky_relu`` only.
    """

    name: str
    negative_slope: float = 0.01


Padding: TypeAlias = Literal["VALID", "SAME", "CIRCULAR"]
PADDINGS: tuple[str, ...] = ("VALID", "SAME", "CIRCULAR")


@dataclass(frozen=True, slots=True)
class Conv:
    """Convolution over the spatial axes (stax ``Conv``, NHWC, weights shared across positions).

    ``filter_shape`` has one entry per spatial axis; ``strides`` (default 1) likewise;
    ``width``: output channels. Fan-in = input channels × filter size.
    """

    filter_shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    padding: Padding = "VALID"
    w_std: float = 1.0
    b_std: float | None = None
    width: int | None = None


@dataclass(frozen=True, slots=True)
class AvgPool:
    """Average pooling over windows (stax ``AvgPool``, ``normalize_edges=False``: padded zeros
    count). ``strides`` default to ``window_shape``."""

    window_shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    padding: Padding = "VALID"


@dataclass(frozen=True, slots=True)
class SumPool:
    """Sum pooling over windows (stax ``SumPool``). ``strides`` default to ``window_shape``."""

    window_shape: tuple[int, ...]
    strides: tuple[int, ...] | None = None
    padding: Padding = "VALID"


@dataclass(frozen=True, slots=True)
class GlobalAvgPool:
    """Mean over all spatial positions (stax ``GlobalAvgPool``)."""


@dataclass(frozen=True, slots=True)
class GlobalSumPool:
    """Sum over all spatial positions (stax ``GlobalSumPool``)."""


@dataclass(frozen=True, slots=True)
class Flatten:
    """Spatial positions and channels into one feature axis (stax ``Flatten``)."""


@dataclass(frozen=True, slots=True)
class LayerNorm:
    """Normalisation over the channel axis (stax ``LayerNorm(axis=-1)``), ``eps`` added to the
    variance. Needs Gaussian inputs (after a dense/conv layer, not after a nonlinearity)."""

    eps: float = 1e-12


@dataclass(frozen=True, slots=True)
class Branches:
    """FanOut into ``branches`` (an empty branch is the identity), then ``FanInSum`` or
    ``FanInProd`` (``merge``). A residual block is ``Branches(((...), ()), "sum")``."""

    branches: tuple[tuple[Layer, ...], ...]
    merge: Literal["sum", "product"] = "sum"


Layer: TypeAlias = (
    Dense | Activation | Conv | AvgPool | SumPool | GlobalAvgPool | GlobalSumPool | Flatten | LayerNorm | Branches
)
#: Layers whose kernel rule involves no spatial structure (the fully connected fused engine).
CHAIN_LAYERS = (Dense, Activation)


@dataclass(frozen=True, slots=True)
class Network:
    """A fully connected network: ``layers`` applied in order to the input."""

    layers: tuple[Layer, ...]
    parameterization: Parameterization = "ntk"


@dataclass(frozen=True, slots=True)
class TwoLayerRelu:
    """The lecture's ``f(x) = m^{-1/2} Σ b_i relu(a_iᵀx)``, a ~ N(0, I_d), b ~ N(0, 1), m → ∞.

    No 1/d: ``ntk_a = <x,x'>(π − θ)/2π``, ``ntk_b = nngp = ‖x‖‖x'‖((π − θ)cos θ + sin θ)/2π``.
    """


@dataclass(frozen=True, slots=True)
class Linear:
    """``<x, x'>``."""


@dataclass(frozen=True, slots=True)
class Polynomial:
    """``(c + <x, x'>)^degree``."""

    degree: int
    c: float = 1.0


@dataclass(frozen=True, slots=True)
class RBF:
    """``exp(−‖x − x'‖² / (2 lengthscale²))``."""

    lengthscale: float


@dataclass(frozen=True, slots=True)
class Laplace:
    """``exp(−‖x − x'‖ / lengthscale)``."""

    lengthscale: float


KernelSpec: TypeAlias = Network | TwoLayerRelu | Linear | Polynomial | RBF | Laplace


def output_names(spec: KernelSpec) -> tuple[str, ...]:
    """The matrices ``spec`` yields, in the contract's order."""
    if isinstance(spec, Network):
        return ("nngp", "ntk")
    if isinstance(spec, TwoLayerRelu):
        return ("ntk", "ntk_a", "ntk_b", "nngp")
    return ("kernel",)


def resolve_outputs(spec: KernelSpec, outputs: Iterable[str] | None) -> tuple[str, ...]:
    """The requested matrix names, deduplicated in order (default: all ``spec`` yields).

    Raises ``ValueError`` for an empty request or a name the kernel does not yield.
    """
    names = output_names(spec)
    if outputs is None:
        return names
    if isinstance(outputs, str):
        outputs = (outputs,)
    wanted = tuple(dict.fromkeys(outputs))
    if not wanted:
        raise ValueError("outputs must name at least one matrix")
    unknown = [o for o in wanted if o not in names]
    if unknown:
        raise ValueError(f"unknown output(s) {unknown} for this kernel; it yields {list(names)}")
    return wanted


def default_output(spec: KernelSpec) -> str:
    """The matrix used when a request names none: ``ntk`` for networks, else ``kernel``."""
    return "ntk" if isinstance(spec, (Network, TwoLayerRelu)) else "kernel"


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 1


def validate_spec(spec: KernelSpec) -> None:
    """Raise ``ValueError`` (with the offending field) if ``spec`` breaks the contract's ranges."""
    if isinstance(spec, Network):
        from core.kernels.registry import validate_layer  # the registry imports this module

        if spec.parameterization not in ("ntk", "standard"):
            raise ValueError(f"parameterization must be 'ntk' or 'standard', got {spec.parameterization!r}")
        for i, layer in enumerate(spec.layers):
            validate_layer(layer, f"layers[{i}]")
    elif isinstance(spec, Polynomial):
        if not _positive_int(spec.degree):
            raise ValueError(f"degree must be an integer >= 1, got {spec.degree!r}")
        if not _finite(spec.c) or spec.c < 0:
            raise ValueError(f"c must be finite and >= 0, got {spec.c!r}")
    elif isinstance(spec, (RBF, Laplace)):
        if not _finite(spec.lengthscale) or spec.lengthscale <= 0:
            raise ValueError(f"lengthscale must be finite and > 0, got {spec.lengthscale!r}")
    elif not isinstance(spec, (TwoLayerRelu, Linear)):
        raise ValueError(f"not a kernel specification: {spec!r}")


def layer_widths_applied(spec: KernelSpec, width: int) -> KernelSpec:
    """``spec`` with every dense/conv layer but the last (top-level) one given ``width`` (networks only).

    This is the infinite-width standard-parameterization kernel to compare with an empirical
    network whose hidden layers have ``width`` units. Other specs are returned unchanged.
    """
    if not isinstance(spec, Network):
        return spec
    return replace(spec, layers=_widths_applied(spec.layers, int(width), top=True))


def _widths_applied(layers: tuple[Layer, ...], width: int, top: bool) -> tuple[Layer, ...]:
    weighted = [i for i, layer in enumerate(layers) if isinstance(layer, (Dense, Conv))]
    last = weighted[-1] if (weighted and top) else -1
    out: list[Layer] = []
    for i, layer in enumerate(layers):
        if isinstance(layer, (Dense, Conv)) and i != last:
            layer = replace(layer, width=width)
        elif isinstance(layer, Branches):
            layer = replace(layer, branches=tuple(_widths_applied(b, width, False) for b in layer.branches))
        out.append(layer)
    return tuple(out)
