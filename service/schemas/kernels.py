"""Kernel specifications (the ``kernel`` field), discriminated on ``type``.

Each model converts itself to the pure ``core.kernels.spec`` dataclass with ``to_core()``.
Layer models are generated from ``core.kernels.registry.LAYER_KINDS`` (fields, ranges and
docs are declared there once).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias, Union

from pydantic import Field, create_model

from core.kernels import spec as core
from core.kernels.registry import LAYER_KINDS, LayerKind, Param
from service.schemas.common import (
    NonNegative,
    Positive,
    RequestModel,
    finite_number,
    integer,
)


class LayerModel(RequestModel):
    """Base of the layer models generated from ``core.kernels.registry``."""

    type: str

    def to_core(self) -> core.Layer:
        kind = LAYER_KINDS[self.type]
        fields = {}
        for param in kind.params:
            value = getattr(self, param.name)
            if param.kind == "layers_list":
                value = [[layer.to_core() for layer in branch] for branch in value]
            fields[param.name] = value
        return kind.build(fields)


def _annotation(param: Param) -> Any:
    """The pydantic type of one registry field (ranges included, so the OpenAPI document has them)."""
    bounds = {key: getattr(param, key) for key in ("gt", "ge", "le") if getattr(param, key) is not None}
    if param.kind == "float":
        ann: Any = finite_number(**bounds)
    elif param.kind == "int":
        ann = integer(**bounds)
    elif param.kind == "ints":
        ann = Annotated[list[integer(**bounds)], Field(min_length=1, max_length=2)]
    elif param.kind == "choice":
        ann = Literal[param.choices]  # type: ignore[valid-type]
    else:  # layers_list
        ann = Annotated[list[list["Layer"]], Field(min_length=1)]  # type: ignore[name-defined]
    if param.nullable:
        ann = ann | None
    return ann


def _model_name(kind_type: str) -> str:
    return "".join(part.capitalize() for part in kind_type.split("_")) + "Layer"


def _layer_model(kind: LayerKind) -> type[LayerModel]:
    fields: dict[str, Any] = {"type": (Literal[kind.type], ...)}  # type: ignore[valid-type]
    for param in kind.params:
        fields[param.name] = (_annotation(param), Field(... if param.required else param.default,
                                                        description=param.doc))
    model = create_model(_model_name(kind.type), __base__=LayerModel, __doc__=kind.doc,
                         __module__=__name__, **fields)
    return model


#: One pydantic model per registered layer kind, in registry order.
LAYER_MODELS: dict[str, type[LayerModel]] = {name: _layer_model(kind) for name, kind in LAYER_KINDS.items()}
globals().update({model.__name__: model for model in LAYER_MODELS.values()})

Layer: TypeAlias = Annotated[  # type: ignore[valid-type]
    Union[tuple(LAYER_MODELS.values())],  # noqa: UP007 - a runtime tuple of generated models
    Field(discriminator="type"),
]
for _model in LAYER_MODELS.values():
    _model.model_rebuild(_types_namespace={"Layer": Layer})


class NetworkKernel(RequestModel):
    """NNGP and NTK of a network; ``layers`` applied in order to the input (n × d, n × L × C or
    n × H × W × C). Whether the network fits its input (and widths under standard
    parameterization) is checked against the input with the request."""

    type: Literal["network"]
    layers: Annotated[list[Layer], Field(min_length=1)]
    parameterization: Literal["ntk", "standard"] = "ntk"

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
    degree: integer(ge=1, le=1000)
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
