"""``POST /v1/kernels`` and ``POST /v1/empirical-kernels`` bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.schemas.common import Dtype, Inputs, RequestModel, Seed, integer
from service.schemas.kernels import KernelSpec, NetworkSpec

#: The names of the matrices kernels yield (a regular-expression alternation).
OUTPUT_NAMES = "nngp|ntk|ntk_a|ntk_b|kernel"
OUTPUT_PATTERN = f"^({OUTPUT_NAMES})$"
OutputName = Annotated[str, Field(pattern=OUTPUT_PATTERN)]
Outputs = Annotated[list[OutputName], Field(min_length=1, max_length=4)]


class KernelsRequest(RequestModel):
    """Gram matrices of ``kernel`` between the rows of ``x1`` and ``x2`` (``x2`` null: ``x1`` itself)."""

    kernel: KernelSpec
    x1: Inputs
    x2: Inputs | None = None
    outputs: Outputs | None = Field(None, description="Matrices to return; default all the kernel yields.")
    dtype: Dtype = "float64"


class EmpiricalKernelsRequest(RequestModel):
    """The exact finite-width NTK ⟨∇θf(x), ∇θf(x')⟩ of one network of ``width`` drawn with ``seed``.

    Every hidden dense layer gets ``width`` units; the readout has one output. Its ``nngp``
    is the readout layer's part of the NTK, which converges to the NNGP as width grows.
    """

    kernel: NetworkSpec
    width: integer(ge=1)
    seed: Seed = 0
    x1: Inputs
    x2: Inputs | None = None
    outputs: Outputs | None = Field(None, description="Matrices to return; default all the kernel yields.")
    dtype: Dtype = "float64"


class KernelsResponse(BaseModel):
    """Gram matrices, each ``shape[0] × shape[1]``, keyed by name (``ntk``, ``nngp``, ``kernel``…)."""

    shape: Annotated[list[int], Field(min_length=2, max_length=2)]
    dtype: Dtype
    results: dict[str, list[list[float]]]


class EmpiricalKernelsResponse(KernelsResponse):
    """As ``KernelsResponse``, plus ‖K_width − K_∞‖_F / ‖K_∞‖_F per matrix."""

    relative_error_to_infinite: dict[str, float]
