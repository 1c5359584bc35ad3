"""Asynchronous jobs: requests (discriminated on ``type``; inputs are dataset ids) and status."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from service.problems import Problem
from service.schemas.common import DATASET_ID_PATTERN, Dtype, RequestModel
from service.schemas.gram import Outputs
from service.schemas.kernels import KernelSpec
from service.schemas.learning import FitSolverOptions, KernelProblem, MaxIter, Tolerance, TrajectoryOptions

DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN, description="An id from POST /v1/datasets.")]
TrajectoryArray = Literal["train_predictions", "test_predictions"]
Device = Annotated[Literal["cpu", "gpu"], Field(description="gpu: run on workers with the Dask resource GPU=1.")]


class GramJob(RequestModel):
    """A tiled Gram matrix of ``kernel`` between datasets ``x1`` and ``x2`` (absent: ``x1`` itself)."""

    type: Literal["gram"]
    kernel: KernelSpec
    x1: DatasetId
    x2: DatasetId | None = None
    outputs: Outputs | None = None
    dtype: Dtype = "float64"
    device: Device = "cpu"


class FitJob(FitSolverOptions, KernelProblem):
    """``POST /v1/models`` as a job; ``x_train``, ``y_train`` are dataset ids. cholesky is bounded by
    NTK_MAX_JOB_TRAIN_SIZE, cg and nystrom by NTK_MAX_ITERATIVE_TRAIN_SIZE."""

    type: Literal["fit"]
    x_train: DatasetId  # type: ignore[assignment]
    y_train: DatasetId  # type: ignore[assignment]
    device: Device = "cpu"


class TrajectoryJob(KernelProblem, TrajectoryOptions):
    """``POST /v1/trajectories`` as a job; every array is a dataset id."""

    type: Literal["trajectory"]
    x_train: DatasetId  # type: ignore[assignment]
    y_train: DatasetId  # type: ignore[assignment]
    x_test: DatasetId | None = None  # type: ignore[assignment]
    y_test: DatasetId | None = None  # type: ignore[assignment]
    device: Device = "cpu"
    solver: Literal["auto", "eigh", "krylov"] = Field(
        "auto", description="eigh: one dense eigendecomposition (the n × n matrix in one process; n ≤ "
        "NTK_MAX_JOB_TRAIN_SIZE). krylov: the same formulas by Lanczos on the matrix-free kernel (n ≤ "
        "NTK_MAX_ITERATIVE_TRAIN_SIZE); its eigenvalues are the Ritz values found. auto: eigh while its 40·n² bytes fit "
        "NTK_DENSE_SOLVE_MAX_BYTES (default: one worker's memory) and n ≤ NTK_MAX_JOB_TRAIN_SIZE, else krylov.")
    tol: Tolerance = Field(1e-8, description="krylov: the relative accuracy of the predictions; ignored by eigh.")
    max_iter: MaxIter = Field(1000, description="krylov: most Lanczos iterations; not reaching tol fails the job "
                              "with the error reached. Ignored by eigh.")
    include: Annotated[list[TrajectoryArray], Field(max_length=2, json_schema_extra={"uniqueItems": True})] = Field(
        ["train_predictions", "test_predictions"],
        description="The prediction arrays carried inline in the JSON result ([]: losses only). times, losses, "
        "eigenvalues and max_stable_learning_rate are always there; a left-out array is null in the JSON and "
        "served as .npy (times × n × k) by GET /v1/jobs/{id}/result?output=<name>.")

    @field_validator("include")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list each array at most once")
        return value


JobCreate = Annotated[GramJob | FitJob | TrajectoryJob, Field(discriminator="type")]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobLinks(BaseModel):
    self: str
    result: str


class JobOut(BaseModel):
    id: str
    type: Literal["gram", "fit", "trajectory"]
    status: JobStatus
    progress: float = Field(ge=0, le=1, description="Tiles done / tiles total (gram); iterations / max_iter or "
                            "better for cg, nystrom and krylov; 0 or 1 otherwise.")
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: Problem | None = Field(description="Why the job failed (a problem document).")
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_page_token: str | None
