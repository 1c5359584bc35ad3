"""Planning a job before it is accepted: its inputs are checked against the caller's datasets,
linked into the job folder, sized (tiles, result bytes against free disk) and written down as a
plan — everything the runner needs, also after a restart."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from core.kernels.engine import pair_work
from core.kernels.shapes import is_chain
from core.kernels.spec import KernelSpec, Network
from core.tiling import choose_tile, tile_count, tile_working_bytes, work_tile
from service.checks import check_features, check_layers, check_shape, check_trajectory_options, resolve_which
from service.inputs import requested_dataset
from service.learning import resolve_fit_solver, resolve_trajectory_solver
from service.matrices import resolve_outputs
from service.problems import insufficient_storage, invalid, too_large
from service.schemas.jobs import FitJob, GramJob, TrajectoryJob
from service.settings import Settings
from service.storage.datasets import Dataset
from service.storage.faults import is_disk_full, writing
from service.storage.models import new_model_id
from service.storage.state import Storage


def _dataset(store: Storage, owner: str, field: str, dataset_id: str | None, ndim: tuple[int, ...] | None = None
             ) -> Dataset | None:
    """The caller's dataset ``dataset_id`` (422 at ``field`` if absent, or not of a rank in ``ndim``;
    inputs leave ``ndim`` out and are checked against the kernel by ``check_shape``)."""
    return None if dataset_id is None else requested_dataset(store, owner, field, dataset_id, ndim)


def _shaped(dataset: Dataset | None) -> np.ndarray | None:
    """A zero-memory stand-in with the dataset's shape (for the shared shape checks)."""
    return None if dataset is None else np.broadcast_to(np.zeros(()), dataset.shape)


def _check_device(spec: KernelSpec, device: str, row_shape: tuple[int, ...]) -> None:
    """GPU workers run fully connected chains on ``n × d`` inputs only (the CuPy path)."""
    if device == "gpu" and isinstance(spec, Network) and (len(row_shape) > 1 or not is_chain(spec)):
        raise invalid(["body", "device"], "this network runs on CPU workers only: the GPU path covers fully "
                      "connected chains (dense layers and activations) on n × d inputs; convolutional, pooling, "
                      "layer_norm and branching networks run with device \"cpu\"")


def gram_tile_rows(spec: KernelSpec, n: int, row_shape: tuple[int, ...], n_outputs: int, itemsize: int,
                   budget_bytes: int) -> int:
    """Rows of a Gram job's square tiles: the memory budget's tile (``choose_tile``, ≥ 3 tiles so two
    workers share even a small job) and, for networks on spatial inputs, at most
    ``work_tile(pair_work)`` rows, so that one tile is a few seconds of work (``TILE_WORK``)."""
    tile = choose_tile(n, math.prod(row_shape), n_outputs, itemsize, budget_bytes, row_blocks=2)
    if isinstance(spec, Network) and len(row_shape) > 1:
        tile = min(tile, work_tile(pair_work(spec, row_shape)))
    return tile


def _link_inputs(folder: Path, datasets: dict[str, Dataset | None], storage: Storage) -> dict[str, str | None]:
    """Hard-link (or copy) the inputs into the job folder: deleting a dataset cannot break the job."""
    inputs = folder / "inputs"
    paths: dict[str, str | None] = {}
    with writing("the job's inputs", "jobs", storage.data_dir):  # a 507 when full (the router removes folder)
        inputs.mkdir(parents=True, exist_ok=True)
        for name, dataset in datasets.items():
            if dataset is None:
                paths[name] = None
                continue
            target = inputs / f"{name}.npy"
            try:
                os.link(storage.datasets.path(dataset.id), target)
            except OSError as exc:
                if is_disk_full(exc):
                    raise
                shutil.copyfile(storage.datasets.path(dataset.id), target)
            paths[name] = str(target)
    return paths


def _check_disk(settings: Settings, needed: int, advice: str = "compute fewer outputs, or float32") -> None:
    free = shutil.disk_usage(settings.data_dir).free
    if needed > 0.9 * free:
        raise insufficient_storage(f"the job's result (it may use 90% of the free space; {advice})", free,
                                   ["store", "jobs"], needed)


def plan_gram(settings: Settings, store: Storage, owner: str, body: GramJob, folder: Path) -> dict[str, Any]:
    """Validate a gram job against its datasets and lay out its folder; returns the plan."""
    spec = body.kernel.to_core()
    check_layers(settings, spec)
    outputs = resolve_outputs(spec, body.outputs)
    x1 = _dataset(store, owner, "x1", body.x1)
    x2 = _dataset(store, owner, "x2", body.x2)
    assert x1 is not None
    check_features(_shaped(x1), _shaped(x2))
    check_shape(spec, _shaped(x1), "x1")
    row_shape = x1.shape[1:]
    _check_device(spec, body.device, row_shape)
    n1, features = x1.shape[0], math.prod(row_shape)
    n2 = None if x2 is None else x2.shape[0]
    itemsize = np.dtype(body.dtype).itemsize
    _check_disk(settings, n1 * (n2 or n1) * len(outputs) * itemsize)
    tile = settings.job_tile or gram_tile_rows(spec, max(n1, n2 or 0), row_shape, len(outputs), itemsize,
                                               settings.job_tile_bytes)
    if tile_working_bytes(min(tile, n1), features, len(outputs), itemsize) > settings.job_tile_bytes \
            and not settings.job_tile:
        raise too_large("job_tile_bytes", f"one tile of {features}-feature rows needs more than "
                        f"{settings.job_tile_bytes} bytes", "Raise the limit or reduce the number of features.")
    paths = _link_inputs(folder, {"x1": x1, "x2": x2}, store)
    return {"x1": paths["x1"], "x2": paths["x2"], "n1": n1, "n2": n2, "tile": tile, "outputs": outputs,
            "dtype": body.dtype, "device": body.device, "tiles": tile_count(n1, n2, tile)}


def _check_train_size(settings: Settings, solver: str, n: int) -> None:
    """413 beyond the training-set bound of ``solver``: the dense solves (cholesky, eigh) hold the
    n × n matrix in one process; the matrix-free ones (cg, nystrom, krylov) grow linearly in n."""
    if solver in ("cholesky", "eigh"):
        if n > settings.max_job_train_size:
            other = "solver \"cg\" or \"nystrom\"" if solver == "cholesky" else "solver \"krylov\""
            raise too_large("max_job_train_size", f"{n} training points is over {settings.max_job_train_size} "
                            f"for solver \"{solver}\"", f"Use {other} (matrix-free: no n × n matrix in one "
                            "process), subsample the training set, or raise the limit (the dense solve needs "
                            "O(n²) memory).")
    elif n > settings.max_iterative_train_size:
        raise too_large("max_iterative_train_size", f"{n} training points is over "
                        f"{settings.max_iterative_train_size} for solver \"{solver}\"",
                        "Subsample the training set or raise the limit.")


def plan_learning(settings: Settings, store: Storage, owner: str, body: FitJob | TrajectoryJob, folder: Path
                  ) -> dict[str, Any]:
    """Validate a fit or trajectory job against its datasets and link its inputs; returns the plan."""
    spec = body.kernel.to_core()
    check_layers(settings, spec)
    which = resolve_which(spec, body.which)
    datasets = {"x_train": _dataset(store, owner, "x_train", body.x_train),
                "y_train": _dataset(store, owner, "y_train", body.y_train, (1, 2))}
    x, y = datasets["x_train"], datasets["y_train"]
    assert x is not None and y is not None
    check_shape(spec, _shaped(x), "x_train")
    _check_device(spec, body.device, x.shape[1:])
    if y.shape[0] != x.shape[0]:
        raise invalid(["body", "y_train"], f"y_train has {y.shape[0]} rows but x_train has {x.shape[0]}")
    n, n_outputs = x.shape[0], 1 if len(y.shape) == 1 else y.shape[1]
    plan: dict[str, Any] = {"which": which, "ridge": body.ridge, "ridge_mode": body.ridge_mode, "device": body.device,
                            "n_train": n, "n_outputs": n_outputs}
    if isinstance(body, TrajectoryJob):
        plan["solver"] = resolve_trajectory_solver(settings, body.solver, n)
        _check_train_size(settings, plan["solver"], n)
        datasets["x_test"] = _dataset(store, owner, "x_test", body.x_test)
        datasets["y_test"] = _dataset(store, owner, "y_test", body.y_test, (1, 2))
        shapes = SimpleNamespace(**body.model_dump(include={"times", "method"}),
                                 x_test=_shaped(datasets["x_test"]), y_test=_shaped(datasets["y_test"]))
        n_test = 0 if datasets["x_test"] is None else datasets["x_test"].shape[0]
        check_trajectory_options(settings, shapes, _shaped(x), n_outputs,
                                 n_inline=(n if "train_predictions" in body.include else 0)
                                 + (n_test if "test_predictions" in body.include else 0))
        _check_disk(settings, len(body.times) * (n + n_test) * n_outputs * 8,  # the .npy prediction arrays
                    "ask for fewer times")
        plan["n_test"] = n_test
        plan["options"] = body.model_dump(include={"times", "learning_rate", "method", "loss_normalization",
                                                   "ridge", "ridge_mode", "tol", "max_iter", "include"})
    else:
        solver = resolve_fit_solver(settings, body, n, job=True)
        _check_train_size(settings, solver.type, n)
        plan.update(solver=solver.type, tol=solver.tol, max_iter=solver.max_iter, seed=solver.seed,
                    centers=solver.centers, preconditioner_rank=solver.preconditioner_rank)
        plan["model_id"] = new_model_id()
        plan["model_meta"] = {"kernel": body.kernel.model_dump(mode="json", exclude_none=True), "which": which,
                              "ridge": body.ridge, "ridge_mode": body.ridge_mode}
    plan["paths"] = _link_inputs(folder, datasets, store)
    return plan
