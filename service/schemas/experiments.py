"""``POST /v1/experiments/lazy-training``: a real finite network beside its NTK prediction."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from service.schemas.common import (
    Dtype,
    Inputs,
    Positive,
    RequestModel,
    Seed,
    Targets,
    integer,
)
from service.schemas.kernels import NetworkSpec
from service.schemas.learning import LossNormalization


class LazyTrainingRequest(RequestModel):
    """Train the network ``kernel`` at ``width`` (drawn with ``seed``) by full-batch gradient descent on
    ``L = (1/2N) Σ (f − y)²`` and report it at each of ``steps`` (step 0 = initialization)."""

    kernel: NetworkSpec
    width: integer(ge=1)
    seed: Seed = 0
    x_train: Inputs
    y_train: Targets
    steps: Annotated[list[integer(ge=0)], Field(min_length=1, max_length=1000)]
    learning_rate: Positive = 1.0
    x_test: Inputs | None = None
    y_test: Targets | None = None
    loss_normalization: LossNormalization = "mean"
    dtype: Dtype = "float64"


class NetworkSide(BaseModel):
    """The finite network as trained."""

    train_loss: list[float]
    test_predictions: list[list[float]] | None = Field(description="One vector of n_test values per step.")
    test_loss: list[float] | None
    relative_parameter_change: list[float] = Field(description="‖θ_t − θ_0‖ / ‖θ_0‖.")
    relative_kernel_change: list[float] = Field(description="‖K_t − K_0‖_F / ‖K_0‖_F, empirical NTK on x_train.")


class NTKSide(BaseModel):
    """The infinite-width NTK's gradient-descent prediction for the same steps and learning rate."""

    initial_function: str = Field(description="'zero' (f_0 = 0) or 'network' (the network's own f_0).")
    train_loss: list[float]
    test_predictions: list[list[float]] | None
    test_loss: list[float] | None


class LazyTrainingOut(BaseModel):
    steps: list[int]
    width: int
    seed: int
    parameter_count: int
    network: NetworkSide
    ntk: NTKSide = Field(description="From f_0 = 0: the contract's trajectory (the infinite ensemble's mean).")
    ntk_from_network_init: NTKSide = Field(description="From the network's own f_0: what linearization predicts.")
    gap_train: list[float] = Field(description="‖f_net − f_ntk_from_network_init‖ / ‖y_train‖ per step.")
    gap_test: list[float] | None
    max_stable_learning_rate: float | None
