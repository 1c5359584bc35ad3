"""Functions that run on Dask workers. They read inputs from files by path (never ship arrays
in the graph), write results and done-markers to the job folder, and never touch the ledger.

A job folder ``<data_dir>/jobs/<id>/`` holds ``inputs/`` (hard links to the datasets, so
deleting a dataset cannot break a running job), ``result/<output>.npy`` (gram: one file per
output, written in place by the tiles in disjoint blocks; see :mod:`service.jobs.results`),
``done/<tile>`` markers, ``CANCELLED`` (the cancel flag) and, for trajectory jobs, ``result.json``
and ``result/<array>.npy``. Jobs of the iterative solvers add ``cache/`` (kernel tiles, removed when
the job ends; :mod:`service.jobs.operator`), ``progress.json``, ``checkpoint.npy``, ``driver.json``
and the sampled centers' inputs under ``inputs/`` (:mod:`service.jobs.solvers`).
"""

from __future__ import annotations

import errno
import logging
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
from distributed import WorkerPlugin

from core.kernels import gram_block
from core.kernels.spec import KernelSpec
from service.jobs.results import TRAJECTORY_ARRAYS, write_tile, write_trajectory_result
from service.problems import job_failed

CANCEL_FLAG = "CANCELLED"


class WarmUp(WorkerPlugin):
    """A Dask worker plugin: compile (or load from cache) the kernel engine when a worker starts,
    so the first tile does not pay for it. Registered by the engine; applies to restarted workers.

    ``setup`` runs on the worker's event loop, so it only starts the compile in a daemon thread
    and returns: heartbeats, ``/health`` and the engine's ``register_plugin`` (hence the API's
    first ``/readyz``) never wait for it. A tile that arrives meanwhile waits on numba's compile
    lock and then uses the compiled engine (nothing is compiled twice)."""

    name = "ntk-warm-up"

    def setup(self, worker: Any) -> None:
        threading.Thread(target=_warm_up_worker, name="ntk-warm-up", daemon=True).start()


def _warm_up_worker() -> None:
    from core.kernels import warm_up

    try:
        warm_up()
    except Exception:  # a failed warm-up only means the first tile compiles
        logging.getLogger("distributed.worker").exception("ntk kernel engine warm-up failed")


class TaskFailed(Exception):
    """A task's failure as a JSON problem document (plain string arg: it pickles safely)."""


def task_failure(detail: str) -> TaskFailed:
    return TaskFailed(orjson.dumps(job_failed(detail)).decode())


def load_input(path: str) -> np.ndarray:
    """A job input, memory-mapped; a corrupted file becomes a clear task failure."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise task_failure(f"input {Path(path).name} cannot be read as .npy ({exc}); upload the dataset again") from None


def _rows(array: np.ndarray, start: int, stop: int, dtype: np.dtype, device: str) -> Any:
    """Rows ``start:stop`` of a memory-mapped input of any rank (``n × d``, ``n × L × C``, ``n × H × W × C``)."""
    block = np.array(array[start:stop], dtype=dtype)
    if not np.isfinite(block).all():
        raise task_failure(f"input rows {start}:{stop} contain NaN or Infinity")
    if device == "gpu":
        import cupy  # the GPU extra

        return cupy.asarray(block)
    return block


def kernel_blocks(spec: KernelSpec, outputs: list[str], dtype: np.dtype, device: str, x1_path: str,
                  x2_path: str | None, rows: tuple[int, int], cols: tuple[int, int], diagonal: bool
                  ) -> dict[str, np.ndarray]:
    """The blocks ``K(x1[rows], x2[cols])`` of ``outputs`` as host arrays (``x2_path`` None: x1 itself;
    ``diagonal``: a symmetric tile on the diagonal), computed on the CPU or, with ``device="gpu"``, by
    CuPy. A failure of the kernel (e.g. overflow) is a :class:`TaskFailed` naming the block."""
    (r0, r1), (c0, c1) = rows, cols
    x1 = load_input(x1_path)
    a = _rows(x1, r0, r1, dtype, device)
    b = None if diagonal else _rows(x1 if x2_path is None else load_input(x2_path), c0, c1, dtype, device)
    try:
        blocks = gram_block(spec, a, b, outputs=outputs, dtype=dtype, symmetric=diagonal)
    except ValueError as exc:
        raise task_failure(str(exc)) from None
    if device == "gpu":
        blocks = {name: block.get() for name, block in blocks.items()}
    for name, block in blocks.items():
        if not np.isfinite(block).all():
            raise task_failure(f"the {name} matrix overflows {dtype} in rows {r0}:{r1}, columns {c0}:{c1}")
    return blocks


def gram_tile(job_dir: str, x1_path: str, x2_path: str | None, spec: KernelSpec, outputs: list[str], dtype: str,
              tile: tuple[int, tuple[int, int], tuple[int, int], bool], device: str = "cpu") -> int:
    """Compute one tile and write it (and its transpose, above the diagonal of a symmetric job).

    Returns the tile index, or -1 if the job was cancelled (nothing written then).
    """
    index, (r0, r1), (c0, c1), diagonal = tile
    folder = Path(job_dir)
    marker = folder / "done" / str(index)
    if marker.exists():
        return index
    if (folder / CANCEL_FLAG).exists():
        return -1
    blocks = kernel_blocks(spec, outputs, np.dtype(dtype), device, x1_path, x2_path, (r0, r1), (c0, c1), diagonal)
    if (folder / CANCEL_FLAG).exists() or not (folder / "done").is_dir():  # cancelled, or deleted meanwhile
        return -1
    try:  # pwrite: once it returns the bytes are the kernel's, so the marker may follow
        write_tile(folder, blocks, (r0, r1), (c0, c1), mirror=x2_path is None and not diagonal)
    except FileNotFoundError:
        if not (folder / "done").is_dir():  # the job was deleted meanwhile
            return -1
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise task_failure(f"the data store is full: rows {r0}:{r1}, columns {c0}:{c1} could not be written") from None
        raise
    marker.write_text(_worker_name())  # which worker did it (observability; tests check the spread)
    return index


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def _learning_inputs(paths: dict[str, str | None]) -> dict[str, np.ndarray | None]:
    return {name: None if path is None else np.array(load_input(path), dtype=np.float64)
            for name, path in paths.items()}


def fit_task(spec: KernelSpec, which: str, paths: dict[str, str | None], ridge: float, ridge_mode: str,
             staging: str) -> dict[str, Any]:
    """Fit a model and stage its arrays; returns the fitted summary for the ledger."""
    from service.learning import fit_model
    from service.problems import ProblemError
    from service.storage.models import model_meta, write_model_arrays

    data = _learning_inputs(paths)
    try:
        fitted = fit_model(spec, which, data["x_train"], data["y_train"], ridge, ridge_mode)
    except ProblemError as exc:
        raise task_failure(exc.detail) from None
    write_model_arrays(Path(staging), data["x_train"], fitted)  # type: ignore[arg-type]
    return model_meta({}, fitted)


def trajectory_task(spec: KernelSpec, which: str, paths: dict[str, str | None], options: dict[str, Any],
                    job_dir: str) -> None:
    """Compute a trajectory by one ``eigh`` and write its result into the job folder
    (:func:`service.jobs.results.write_trajectory_result`)."""
    from service.learning import one_shot_trajectory, trajectory_body
    from service.problems import ProblemError

    body = SimpleNamespace(**options, **_learning_inputs(paths))
    try:
        document = trajectory_body(one_shot_trajectory(spec, which, body))
    except ProblemError as exc:
        raise task_failure(exc.detail) from None
    write_trajectory(Path(job_dir), document, options)


def write_trajectory(folder: Path, document: dict[str, Any], options: dict[str, Any]) -> None:
    """The trajectory result with the arrays ``options["include"]`` asks for inline (default: both);
    a full disk is a task failure that says so."""
    try:
        write_trajectory_result(folder, document, options.get("include", list(TRAJECTORY_ARRAYS)))
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise task_failure("the data store is full: the trajectory result could not be written") from None
        raise
