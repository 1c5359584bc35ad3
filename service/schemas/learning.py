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
    Seed,
    Targets,
    finite_number,
    integer,
)
from service.schemas.gram import OUTPUT_PATTERN
from service.schemas.kernels import KernelSpec

Which = Annotated[str, Field(pattern=OUTPUT_PATTERN,
                             description="The matrix to use; default ntk for network kernels, kernel otherwise.")]
RidgeMode = Literal["absolute", "relative"]
LossNormalization = Literal["mean", "sum"]
Tolerance = finite_number(gt=0, lt=1)
MaxIter = integer(ge=1, le=100_000)


class KernelProblem(RequestModel):
    """A kernel, the matrix to use, training data and the ridge."""

    kernel: KernelSpec
    which: Which | None = None
    x_train: Inputs
    y_train: Targets
    ridge: NonNegative = Field(0.0, description="absolute: K + ridge·I; relative: K + ridge·(trace K / n)·I.")
    ridge_mode: RidgeMode = "absolute"


class FitSolverOptions(RequestModel):
    """How a fit is solved (api-v1.md, "Training sets beyond one machine's memory")."""

    solver: Literal["auto", "cholesky", "cg", "nystrom"] = Field(
        "auto", description="cholesky: the exact dense solve (the n × n matrix in one process). cg: the same "
        "solution by Nyström-preconditioned conjugate gradients, matrix-free. nystrom: Nyström kernel ridge "
        "regression on `centers` training points drawn with `seed` (Falkon); exact with centers = n. auto: cholesky "
        "while its 25·n² bytes fit NTK_DENSE_SOLVE_MAX_BYTES (default: one worker's memory; and, for jobs, n ≤ NTK_MAX_JOB_TRAIN_SIZE), else nystrom. "
        "cg and nystrom models predict means at t = ∞ only (no time, variance or trajectory).")
    tol: Tolerance = Field(1e-8, description="cg/nystrom: stop at this relative residual of the solved system; "
                           "ignored by cholesky.")
    max_iter: MaxIter = Field(1000, description="cg/nystrom: most iterations; not reaching tol is an error that "
                              "reports the residual reached. Ignored by cholesky.")
    centers: integer(ge=1) | None = Field(
        None, description="nystrom: the number M of centers (≤ n and ≤ NTK_MAX_NYSTROM_CENTERS); null: "
        "min(n, NTK_MAX_NYSTROM_CENTERS, max(1000, ⌈√n · ln n⌉)). Only with solver nystrom or auto (used if auto "
        "picks nystrom); with cholesky or cg it is a 422.")
    seed: Seed = Field(
        0, description="Draws the nystrom centers (and cg's preconditioner points): the same seed, data and "
        "settings give the same model.")


class ModelCreate(FitSolverOptions, KernelProblem):
    """Fit kernel regression (solver ``auto``: Cholesky for the synchronous sizes by default); a singular
    system with ridge 0 is refused."""


class SolverOut(BaseModel):
    type: Literal["cholesky", "cg", "nystrom"]
    centers: int = Field(description="Training points predictions are taken against: n (cholesky, cg) or M (nystrom).")
    seed: int | None = Field(description="The seed that drew the centers (nystrom) or cg's preconditioner points; "
                             "null for cholesky.")
    iterations: int | None = Field(description="Iterations of cg/nystrom; null for cholesky (a direct solve).")
    relative_residual: float | None = Field(
        description="Reached by the solver, max over outputs — cg: ‖y − (K + ρI)α‖/‖y‖; nystrom: of Falkon's "
        "preconditioned system for (K_nMᵀK_nM + ρK_MM)β = K_nMᵀy; null for cholesky.")


class ModelOut(BaseModel):
    id: str
    n_train: int
    n_outputs: int
    kernel: KernelSpec
    which: str
    ridge: float
    ridge_mode: RidgeMode
    train_residual_norm: float = Field(description="‖K α − y‖_F on the training points (nystrom: ‖K_nM β − y‖_F).")
    condition_number: float | None = Field(description="LAPACK estimate (1-norm) for K + ridge·I (cholesky); "
                                           "null when not estimated (cg, nystrom).")
    solver: SolverOut
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


class TrajectorySolverOut(BaseModel):
    type: Literal["krylov"]
    iterations: int = Field(description="Lanczos iterations (kernel products).")
    estimated_error: float = Field(description="Estimated relative error of the predictions (max over times, outputs).")


class TrajectoryOut(BaseModel):
    times: list[float]
    train_loss: list[float]
    train_predictions: list[list[list[float]]] | None = Field(
        description="One n × k matrix per time; null only in a job result whose `include` leaves it out "
        "(GET /v1/jobs/{id}/result?output=train_predictions serves it as .npy).")
    test_predictions: list[list[list[float]]] | None = Field(
        description="One n_test × k matrix per time; null without x_test or when a job's `include` leaves it out.")
    test_loss: list[float] | None
    eigenvalues: list[float] = Field(description="Of K, descending (krylov: the Ritz values found).")
    max_stable_learning_rate: float | None = Field(description="2N / λ_max(K + ridge·I); null if K = 0.")
    solver: TrajectorySolverOut | None = Field(None, description="krylov trajectory jobs only.")


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


