"""Kernel specifications (the ``kernel`` field), discriminated on ``type``.

Each model converts itself to the pure ``core.kernels.spec`` dataclass with ``to_core()``.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import Field, model_validator

from core.kernels import spec as core
from service.schemas.common import (
    FiniteFloat,
    Integer,
    NonNegative,
    Positive,
    RequestModel,
)


class DenseLayer(RequestModel):
    """Fully connected layer. ``b_std`` null: no bias parameter; ``width``: output width
    (needed under standard parameterization on every dense layer but the last)."""

    type: Literal["dense"]
    w_std: Positive = 1.0
    b_std: NonNegative | None = None
    width: Annotated[Integer, Field(ge=1)] | None = None

    def to_core(self) -> core.Layer:
        return core.Dense(w_std=float(self.w_std), b_std=None if self.b_std is None else float(self.b_std),
                          width=self.width)


class _Activation(RequestModel):
    type: str

    def to_core(self) -> core.Layer:
        return core.Activation(self.type)


class ReluLayer(_Activation):
    """ReLU, max(x, 0)."""

    type: Literal["relu"]


class AbsLayer(_Activation):
    """Absolute value |x|."""

    type: Literal["abs"]


class ErfLayer(_Activation):
    """Error function erf(x)."""

    type: Literal["erf"]


class SignLayer(_Activation):
    """Sign function; its derivative kernel is 0 (as in neural-tangents)."""

    type: Literal["sign"]


class GeluLayer(_Activation):
    """Exact GELU, x·Φ(x)."""

    type: Literal["gelu"]


class SinLayer(_Activation):
    """sin(x)."""

    type: Literal["sin"]


class IdentityLayer(_Activation):
    """The identity (a linear network)."""

    type: Literal["identity"]


class LeakyReluLayer(RequestModel):
    """Leaky ReLU: x for x ≥ 0, ``negative_slope``·x otherwise."""

    type: Literal["leaky_relu"]
    negative_slope: FiniteFloat = 0.01

    def to_core(self) -> core.Layer:
        return core.Activation("leaky_relu", negative_slope=float(self.negative_slope))


class ElementwiseLayer(RequestModel):
    """A named function without a closed-form dual kernel, computed numerically (Hermite series with a
    rigorous truncation bound, 2-D Gauss–Hermite quadrature as fallback; see core/kernels/quadrature.py)."""

    type: Literal["elementwise"]
    fn: Literal["tanh", "sigmoid", "softplus", "swish"]

    def to_core(self) -> core.Layer:
        return core.Activation(self.fn)


Layer: TypeAlias = Annotated[
    DenseLayer | ReluLayer | LeakyReluLayer | AbsLayer | ErfLayer | SignLayer | GeluLayer | SinLayer
    | IdentityLayer | ElementwiseLayer,
    Field(discriminator="type"),
]


class NetworkKernel(RequestModel):
    """NNGP and NTK of a fully connected network; ``layers`` applied in order to the input."""

    type: Literal["network"]
    layers: Annotated[list[Layer], Field(min_length=1)]
    parameterization: Literal["ntk", "standard"] = "ntk"

    @model_validator(mode="after")
    def _widths_for_standard(self) -> NetworkKernel:
        if self.parameterization == "standard":
            dense = [i for i, layer in enumerate(self.layers) if isinstance(layer, DenseLayer)]
            for i in dense[:-1]:
                if self.layers[i].width is None:  # type: ignore[union-attr]
                    raise ValueError(
                        f"layers[{i}].width is required under standard parameterization: "
                        "every dense layer but the last needs its output width"
                    )
        return self

    def to_core(self) -> core.KernelSpec:
        return core.Network(tuple(layer.to_core() for layer in self.layers), self.parameterization)


class TwoLayerReluKernel(RequestModel):
    """The lecture's two-layer ReLU network f(x) = m^{-1/2} Σ b_i relu(a_iᵀx) at m → ∞ (no 1/d)."""

    type: Literal["two_layer_relu"]

    def to_core(self) -> core.KernelSpec:
        return core.TwoLayerRelu()


class LinearKernel(RequestModel):
    """⟨x, x'⟩."""

    type: Literal["linear"]

    def to_core(self) -> core.KernelSpec:
        return core.Linear()


class PolynomialKernel(RequestModel):
    """(c + ⟨x, x'⟩)^degree."""

    type: Literal["polynomial"]
    degree: Annotated[Integer, Field(ge=1, le=1000)]
    c: NonNegative = 1.0

    def to_core(self) -> core.KernelSpec:
        return core.Polynomial(degree=self.degree, c=float(self.c))


class RBFKernel(RequestModel):
    """exp(−‖x − x'‖² / (2 lengthscale²))."""

    type: Literal["rbf"]
    lengthscale: Positive

    def to_core(self) -> core.KernelSpec:
        return core.RBF(lengthscale=float(self.lengthscale))


class LaplaceKernel(RequestModel):
    """exp(−‖x − x'‖ / lengthscale)."""

    type: Literal["laplace"]
    lengthscale: Positive

    def to_core(self) -> core.KernelSpec:
        return core.Laplace(lengthscale=float(self.lengthscale))


KernelSpec: TypeAlias = Annotated[
    NetworkKernel | TwoLayerReluKernel | LinearKernel | PolynomialKernel | RBFKernel | LaplaceKernel,
    Field(discriminator="type"),
]
#: Kernels that describe a network, so a finite-width instance exists.
NetworkSpec: TypeAlias = Annotated[NetworkKernel | TwoLayerReluKernel, Field(discriminator="type")]
