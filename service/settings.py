"""All configuration in one place: ``NTK_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings. Every field is read from ``NTK_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="NTK_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("./ntk-data"), description="Where datasets, models and job results live.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: str = "INFO"

    api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Comma-separated bearer keys; empty = no authentication."
    )

    # Limits on synchronous work (exceeding one is a 413 that points to /v1/jobs).
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_result_entries: int = Field(
        20_000_000, ge=1, description="Largest number of matrix entries a synchronous response may carry."
    )
    max_train_size: int = Field(8_000, ge=1, description="Largest training set for a synchronous fit.")
    max_layers: int = Field(64, ge=1, description="Most layers in one network specification (branches included).")
    max_kernel_work: float = Field(
        2e11, gt=0,
        description="Most multiply-adds (estimated: positions² per layer and example pair, × filter size for conv) "
        "of one synchronous network-kernel request; convolutional Grams beyond it run as jobs.")
    max_empirical_width: int = Field(2**18, ge=1, description="Widest finite network for empirical kernels.")
    max_empirical_work: int = Field(
        400_000_000,
        ge=1,
        description="Most float entries an empirical-kernel request may hold at once (parameters and activations).",
    )
    max_lazy_training_work: int = Field(
        10_000_000_000, ge=1, description="Most multiply-adds a synchronous lazy-training experiment may take.")
    max_dataset_bytes: int = Field(2 * 1024**3, ge=1, description="Largest dataset upload.")
    compute_threads: int = Field(2, ge=1, description="Synchronous computations running at once.")
    compute_queue: int = Field(
        8, ge=0, description="Synchronous computations that may wait for a free thread; beyond them a 503.")
    compute_queue_bytes: int = Field(
        512 * 1024**2, ge=0, description="Request-body bytes the computations not yet running may hold in all; "
        "beyond, a 503.")
    compute_queue_timeout: float = Field(
        30.0, gt=0, description="Seconds a computation may wait for a free thread before it is answered 503.")
    store_max_used_fraction: float = Field(
        0.95, gt=0, le=1, description="/readyz reports not ready when the data directory's filesystem is fuller "
        "than this (used / (used + available), as df shows it); 1 turns the check off.")

    # Asynchronous jobs (Dask).
    dask_address: str | None = Field(None, description="External scheduler, e.g. tcp://scheduler:8786; "
                                     "unset: an embedded LocalCluster.")
    dask_workers: int = Field(2, ge=1, description="Worker processes of the embedded LocalCluster.")
    dask_worker_memory: str | None = Field(None, description="Memory limit per embedded worker, e.g. '4GiB' "
                                           "(default: machine memory / workers).")
    job_tile_bytes: int = Field(256 * 1024**2, ge=1024**2, description="Working-memory budget of one Gram tile.")
    job_tile: int | None = Field(None, ge=1, description="Fixed Gram tile size (rows); default: from the budget.")
    max_job_train_size: int = Field(
        40_000, ge=1, description="Largest training set of a dense solve: fit jobs with solver cholesky and "
        "trajectory jobs with solver eigh (they hold the n × n matrix in one process).")

    # Solvers for large training sets (issue #10; the "auto" rule and the iterative solvers' bounds).
    dense_solve_max_bytes: int | None = Field(
        None, ge=0,
        description="The \"auto\" solver rule: a fit (trajectory) uses cholesky (eigh) while its measured peak — "
        "25·n² bytes (40·n²) in one worker — fits in this many bytes and n ≤ max_job_train_size; beyond, nystrom "
        "(krylov). Unset: the memory of one embedded worker (dask_worker_memory, else physical memory / "
        "dask_workers); with an external scheduler (dask_address) set it to your workers' memory (unset: 32 GiB).")
    max_iterative_train_size: int = Field(
        10_000_000, ge=1, description="Largest training set of fit jobs with solver cg or nystrom and of "
        "trajectory jobs with solver krylov (matrix-free: memory grows linearly in n).")
    max_nystrom_centers: int = Field(
        10_000, ge=1, description="Most Nyström centers M of one fit (the M × M matrices live in one process: "
        "about 24·M² bytes). The default number of centers is min(n, this, max(1000, ⌈√n · ln n⌉)).")
    cg_preconditioner_rank: int = Field(
        1000, ge=0, description="Rank r of the Nyström preconditioner of solver cg (min(n, r) training points "
        "drawn with the request's seed; the n × r columns are held by one process); 0: no preconditioner.")
    solver_cache_bytes: int = Field(
        16 * 1024**3, ge=0, description="Disk bytes one cg/nystrom/krylov job may use to cache float64 kernel tiles "
        "in its job folder (cache/, removed when the job ends; also capped at half the free disk when the job "
        "starts; used only where reading a tile is faster than computing it). 0: every product recomputes its tiles.")

    @property
    def dense_solve_budget(self) -> int:
        """Bytes one dense solve may use in a worker (``dense_solve_max_bytes``, or its default)."""
        if self.dense_solve_max_bytes is not None:
            return self.dense_solve_max_bytes
        if self.dask_worker_memory:
            from dask.utils import parse_bytes

            return int(parse_bytes(self.dask_worker_memory))
        if self.dask_address:
            return 32 * 1024**3
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // self.dask_workers

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
