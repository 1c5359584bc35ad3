"""Models (kernel regression), predictions, trajectories and spectra.

Conventions (api-v1.md): loss ``L = (1/2N) Σ ‖f − y‖²`` with N the number of target entries
(``loss_normalization="mean"``) or N = 1 (``"sum"``); training time ``t`` is in units where
the learning rate multiplies it (``e^{−η K t / N}``); ``method="gd"`` times are step counts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool

from service.schemas.common import (
    Inputs,
    NonNegative,
    Positive,
    RequestModel,
    Targets,
    integer,
)
from service.schemas.kernels import KernelSpec

Which = Annotated[str, Field(pattern=r"^(nngp|ntk|ntk_a|ntk_b|kernel)$",
                             description="The matrix to use; default ntk for network kernels, kernel otherwise.")]
RidgeMode = Literal["absolute", "relative"]
LossNormalization = Literal["mean", "sum"]


class KernelProblem(RequestModel):
    """A kernel, the matrix to use, training data and the ridge."""

    kernel: KernelSpec
    which: Which | None = None
    x_train: Inputs
    y_train: Targets
    ridge: NonNegative = Field(0.0, description="absolute: K + ridge·I; relative: K + ridge·(trace K / n)·I.")
    ridge_mode: RidgeMode = "absolute"


class ModelCreate(KernelProblem):
    """Fit kernel regression (Cholesky); a singular system with ridge 0 is refused."""


class ModelOut(BaseModel):
    id: str
    n_train: int
    n_outputs: int
    kernel: KernelSpec
    which: str
    ridge: float
    ridge_mode: RidgeMode
    train_residual_norm: float = Field(description="‖K α − y‖_F on the training points.")
    condition_number: float | None = Field(description="LAPACK estimate (1-norm) for K + ridge·I.")
    created_at: str


class ModelList(BaseModel):
    items: list[ModelOut]
    next_page_token: str | None


class PredictionRequest(RequestModel):
    """Mean (and optionally variance) after training for ``time`` (null: t = ∞, kernel regression)."""

    x_test: Inputs
    time: NonNegative | None = None
    variance: StrictBool = False
    learning_rate: Positive = 1.0
    loss_normalization: LossNormalization = "mean"


class PredictionOut(BaseModel):
    mean: list[list[float]] = Field(description="n_test × k.")
    variance: list[float] | None = Field(description="Per test point; null unless requested.")


class TrajectoryOptions(RequestModel):
    """Which times to report and how training runs (gradient flow or gradient descent)."""

    times: Annotated[list[NonNegative], Field(min_length=1, max_length=1000)]
    learning_rate: Positive = 1.0
    method: Literal["flow", "gd"] = "flow"
    x_test: Inputs | None = None
    y_test: Targets | None = None
    loss_normalization: LossNormalization = "mean"


class TrajectoryRequest(TrajectoryOptions, KernelProblem):
    """A one-shot trajectory: the kernel problem and the trajectory options inline."""


class TrajectoryOut(BaseModel):
    times: list[float]
    train_loss: list[float]
    train_predictions: list[list[list[float]]] = Field(description="One n × k matrix per time.")
    test_predictions: list[list[list[float]]] | None
    test_loss: list[float] | None
    eigenvalues: list[float] = Field(description="Of K, descending.")
    max_stable_learning_rate: float | None = Field(description="2N / λ_max(K + ridge·I); null if K = 0.")


class SpectraRequest(RequestModel):
    kernel: KernelSpec
    which: Which | None = None
    x: Inputs
    top_k: integer(ge=1) | None = None


class SpectraOut(BaseModel):
    eigenvalues: list[float] = Field(description="Descending (all, or the top_k largest).")
    condition_number: float | None = Field(description="λ_max / λ_min; null when λ_min = 0 (singular).")
    min_eigenvalue: float
    trace: float


