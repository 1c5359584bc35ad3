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


Layer: TypeAlias = Dense | Activation


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
        if spec.parameterization not in ("ntk", "standard"):
            raise ValueError(f"parameterization must be 'ntk' or 'standard', got {spec.parameterization!r}")
        dense_positions = [i for i, layer in enumerate(spec.layers) if isinstance(layer, Dense)]
        for i, layer in enumerate(spec.layers):
            if isinstance(layer, Dense):
                if not _finite(layer.w_std) or layer.w_std <= 0:
                    raise ValueError(f"layers[{i}].w_std must be finite and > 0, got {layer.w_std!r}")
                if layer.b_std is not None and (not _finite(layer.b_std) or layer.b_std < 0):
                    raise ValueError(f"layers[{i}].b_std must be null or finite and >= 0, got {layer.b_std!r}")
                if layer.width is not None and not _positive_int(layer.width):
                    raise ValueError(f"layers[{i}].width must be null or an integer >= 1, got {layer.width!r}")
                if (
                    spec.parameterization == "standard"
                    and layer.width is None
                    and i != dense_positions[-1]
                ):
                    raise ValueError(
                        f"layers[{i}].width is required under standard parameterization "
                        "(it is the fan-in of the next dense layer)"
                    )
            elif isinstance(layer, Activation):
                if layer.name not in CLOSED_FORM_ACTIVATIONS + NUMERICAL_ACTIVATIONS:
                    raise ValueError(f"layers[{i}]: unknown activation {layer.name!r}")
                if not _finite(layer.negative_slope):
                    raise ValueError(f"layers[{i}].negative_slope must be finite")
            else:
                raise ValueError(f"layers[{i}] is not a Dense or Activation layer: {layer!r}")
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
    """``spec`` with every dense layer but the last given ``width`` (networks only).

    This is the infinite-width standard-parameterization kernel to compare with an empirical
    network whose hidden layers have ``width`` units. Other specs are returned unchanged.
    """
    if not isinstance(spec, Network):
        return spec
    dense = [i for i, layer in enumerate(spec.layers) if isinstance(layer, Dense)]
    last = dense[-1] if dense else -1
    layers = tuple(
        replace(layer, width=int(width)) if isinstance(layer, Dense) and i != last else layer
        for i, layer in enumerate(spec.layers)
    )
    return replace(spec, layers=layers)
