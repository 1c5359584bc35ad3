"""Asynchronous jobs: requests (discriminated on ``type``; inputs are dataset ids) and status."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from service.problems import Problem
from service.schemas.common import DATASET_ID_PATTERN, Dtype, RequestModel
from service.schemas.gram import Outputs
from service.schemas.kernels import KernelSpec
from service.schemas.learning import KernelProblem, TrajectoryOptions

DatasetId = Annotated[str, Field(pattern=DATASET_ID_PATTERN, description="An id from POST /v1/datasets.")]
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


class FitJob(KernelProblem):
    """``POST /v1/models`` as a job; ``x_train``, ``y_train`` are dataset ids."""

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


JobCreate = Annotated[GramJob | FitJob | TrajectoryJob, Field(discriminator="type")]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobLinks(BaseModel):
    self: str
    result: str


class JobOut(BaseModel):
    id: str
    type: Literal["gram", "fit", "trajectory"]
    status: JobStatus
    progress: float = Field(ge=0, le=1, description="Tiles done / tiles total (gram); 0 or 1 otherwise.")
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: Problem | None = Field(description="Why the job failed (a problem document).")
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_page_token: str | None
