"""Driver tasks of the iterative solvers: ``cg`` and ``nystrom`` fits, ``krylov`` trajectories.

A driver is one Dask task (key ``<job>-driver``) that runs :mod:`core.solvers` on a
:class:`~service.jobs.operator.TiledKernel`: through ``distributed.worker_client`` it secedes from
its worker's thread pool, so the tile tasks of every kernel product run on the same (small)
cluster, its own worker included. It holds ``n × k`` vectors and small matrices only.

In the job folder it keeps (see also :mod:`service.jobs.tasks`):

- ``progress.json`` — ``{"fraction", "iteration", "residual"}`` after every iteration, which the
  runner copies into the ledger. ``fraction`` = max(iterations / max_iter, log(residual) / log(tol)),
  below 1 until the job succeeds;
- ``checkpoint.npy`` (+ ``checkpoint.json``, its iteration) — the iterate every
  :data:`CHECKPOINT_EVERY` iterations (cg: α, nystrom: β). When the driver's worker dies, Dask
  runs the driver again elsewhere and it warm-starts from there (``x0``) with the remaining
  iterations; tiles already cached are reused. A krylov trajectory restarts its Lanczos process
  (only from the cache);
- ``driver.json`` — where the driver runs (worker address, pid), which attempt it is, the iteration
  it resumed from, and the tile cache's measurements and decision (``cache``);
- ``inputs/centers.npy`` / ``inputs/preconditioner_centers.npy`` — the sampled points' inputs that
  tile tasks read like any input.

Cancellation: the callback checks the job's cancel flag every iteration and every tile task checks
it before computing, so a cancelled driver stops within about one tile and returns ``None``.
Not reaching ``tol`` within ``max_iter`` fails the job with :class:`core.solvers.NotConverged`'s
message (the residual reached).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.dynamics import Trajectory, normalization_count
from core.dynamics.trajectory import as_targets
from core.kernels.spec import KernelSpec
from core.solvers import (
    NotConverged,
    choose_centers,
    conjugate_gradients,
    krylov_trajectory,
    nystrom_preconditioner,
    nystrom_solve,
)
from service.jobs.operator import JobCancelled, KernelSource, TiledKernel, row_block_size
from service.jobs.tasks import CANCEL_FLAG, load_input, task_failure, write_trajectory

#: Iterations between two checkpoints of a cg / nystrom iterate.
CHECKPOINT_EVERY = 5
PROGRESS = "progress.json"
CHECKPOINT = "checkpoint.npy"
DRIVER = "driver.json"
#: Solvers whose jobs run as a driver task (the rest run in one task: cholesky, eigh).
ITERATIVE = ("cg", "nystrom", "krylov")


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The settings a driver needs: ``tile_bytes`` (``NTK_JOB_TILE_BYTES``, one tile's working memory),
    ``tile`` (``NTK_JOB_TILE``: fixed tile rows, or None) and ``cache_bytes`` (the tile cache's bound)."""

    tile_bytes: int
    tile: int | None
    cache_bytes: int


class DriverFolder:
    """The driver's files in the job folder (module docstring)."""

    def __init__(self, job_dir: str) -> None:
        self.root = Path(job_dir)

    @property
    def cancelled(self) -> bool:
        return (self.root / CANCEL_FLAG).exists()

    def _write(self, name: str, data: bytes) -> None:
        """``data`` as the file ``name`` (relative to the job folder), atomically."""
        target = self.root / name
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(3)}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except OSError:  # the job was deleted meanwhile (its cancel flag stops us next), or the disk is full
            with contextlib.suppress(OSError):
                tmp.unlink()

    def start(self) -> int:
        """Record this attempt (worker, pid) and return its number (1 for the first run)."""
        from distributed import get_worker

        attempt = 1
        with contextlib.suppress(OSError, ValueError, KeyError):
            attempt = int(json.loads((self.root / DRIVER).read_text())["attempt"]) + 1
        record = {"attempt": attempt, "worker": str(get_worker().address), "pid": os.getpid()}
        self._write(DRIVER, json.dumps(record).encode())
        return attempt

    def note(self, **fields: Any) -> None:
        """Add ``fields`` to this attempt's record in ``driver.json``."""
        with contextlib.suppress(OSError, ValueError):
            record = json.loads((self.root / DRIVER).read_text())
            self._write(DRIVER, json.dumps({**record, **fields}).encode())

    def progress(self, fraction: float, iteration: int, residual: float) -> None:
        record = {"fraction": min(max(fraction, 0.0), 0.99), "iteration": iteration,
                  "residual": residual if math.isfinite(residual) else None}
        self._write(PROGRESS, json.dumps(record).encode())

    def save_checkpoint(self, x: np.ndarray, iteration: int) -> None:
        """The iterate and its iteration (two files, the array first: a torn pair is detected on load)."""
        buffer = _npy_bytes(x)
        self._write(CHECKPOINT, buffer)
        self._write(CHECKPOINT + ".json", json.dumps({"iteration": iteration, "bytes": len(buffer)}).encode())

    def load_checkpoint(self, shape: tuple[int, ...]) -> tuple[np.ndarray, int] | None:
        """The last checkpoint if it is complete and of ``shape``."""
        try:
            meta = json.loads((self.root / (CHECKPOINT + ".json")).read_text())
            path = self.root / CHECKPOINT
            if path.stat().st_size != meta["bytes"]:
                return None
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None
        if x.shape != shape or x.dtype != np.float64 or not np.isfinite(x).all():
            return None
        return x, int(meta["iteration"])

    def write_inputs(self, name: str, array: np.ndarray) -> str:
        path = self.root / "inputs" / f"{name}.npy"
        self._write(f"inputs/{name}.npy", _npy_bytes(array))
        if not path.exists():
            raise task_failure(f"the job folder has no room for the {name} inputs (the data store is full?)")
        return str(path)

    def callback(self, tol: float, max_iter: int, done: int = 0, checkpoint: bool = False
                 ) -> Callable[[int, np.ndarray, float], None]:
        """The solver callback: cancel check, progress, and (``checkpoint``) the iterate every
        :data:`CHECKPOINT_EVERY` iterations. ``done``: iterations of earlier attempts."""

        def callback(iteration: int, x: np.ndarray, residual: float) -> None:
            if self.cancelled:
                raise JobCancelled
            total = done + iteration
            by_residual = math.log(residual) / math.log(tol) if 0 < residual < 1 else float(residual == 0)
            self.progress(max(total / (done + max_iter), by_residual), total, residual)
            if checkpoint and iteration % CHECKPOINT_EVERY == 0:
                self.save_checkpoint(x, total)

        return callback


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


@dataclass
class _Problem:
    """What every driver starts from: the training operator, the targets and the ridge."""

    folder: DriverFolder
    source: KernelSource
    x_path: str
    y: np.ndarray
    y_was_1d: bool
    tile: int
    limits: EngineLimits
    key: str

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def operator(self, client: Any, rows: str, cols: str | None, name: str, *, cached: bool = False,
                 tile: int | None = None) -> TiledKernel:
        source = KernelSource(self.source.spec, self.source.which, rows, cols, self.source.job_dir,
                              self.source.device)
        budget = _cache_budget(self.folder.root, self.limits.cache_bytes) if cached else 0
        return TiledKernel(client, source, tile=tile or self.tile, name=name, key=self.key, cache_bytes=budget)

    def ridge(self, train: TiledKernel, ridge: float, mode: str) -> float:
        """ρ: ``ridge``, or ``ridge · trace(K) / n`` for mode "relative" (as ``core.regression.effective_ridge``;
        the trace from the operator's diagonal)."""
        return float(ridge) * float(train.diagonal().sum()) / self.n if mode == "relative" else float(ridge)


def _cache_budget(folder: Path, configured: int) -> int:
    """The cache bound: the setting, and at most half the disk that is free when the driver starts
    (counting what an earlier attempt of the job already cached as free: it is reused)."""
    import shutil

    cached = 0
    for path in (folder / "cache").rglob("*.npy"):
        with contextlib.suppress(OSError):  # a temporary renamed meanwhile
            cached += path.stat().st_size
    return max(0, min(configured, (shutil.disk_usage(folder).free + cached) // 2))


def _problem(job_dir: str, spec: KernelSpec, plan: dict[str, Any], limits: EngineLimits) -> _Problem:
    from service.jobs.planning import gram_tile_rows

    folder = DriverFolder(job_dir)
    x_path, y_path = plan["paths"]["x_train"], plan["paths"]["y_train"]
    x = load_input(x_path)
    try:
        y, was_1d = as_targets(np.array(load_input(y_path), dtype=np.float64), x.shape[0], "y_train")
    except ValueError as exc:
        raise task_failure(str(exc)) from None
    tile = limits.tile or gram_tile_rows(spec, x.shape[0], x.shape[1:], 1, 8, limits.tile_bytes)
    source = KernelSource(spec, plan["which"], x_path, None, job_dir, plan.get("device", "cpu"))
    key = f"{Path(job_dir).name}-{secrets.token_hex(3)}"
    return _Problem(folder, source, x_path, y, was_1d, tile, limits, key)


def _solving(run: Callable[[], Any]) -> Any:
    """Run a solve: cancellation → ``None``; the solver's refusals (not converged, not positive
    definite) and a full disk → a job failure that says so."""
    from service.storage.faults import is_disk_full

    try:
        return run()
    except JobCancelled:
        return None
    except ValueError as exc:  # NotConverged included: its message reports the residual reached
        raise task_failure(str(exc)) from None
    except OSError as exc:
        if is_disk_full(exc):
            raise task_failure("the data store is full: the job's result could not be written") from None
        raise


# --- fits ---------------------------------------------------------------------------------------------------------


def fit_driver(job_dir: str, spec: KernelSpec, plan: dict[str, Any], staging: str, limits: EngineLimits
               ) -> dict[str, Any] | None:
    """A ``cg`` or ``nystrom`` fit job: solve on the workers, stage the dual model in ``staging``
    and return its ledger summary (``service.storage.models.dual_model_meta``); ``None`` if cancelled."""
    from distributed import worker_client

    problem = _problem(job_dir, spec, plan, limits)
    problem.folder.start()
    with worker_client() as client:
        return _solving(lambda: (_fit_cg if plan["solver"] == "cg" else _fit_nystrom)(client, problem, plan, staging))


def _warm_start(problem: _Problem, shape: tuple[int, ...], max_iter: int) -> tuple[np.ndarray | None, int, int]:
    """``(x0, iterations done, iterations left)`` from the checkpoint of an earlier attempt."""
    found = problem.folder.load_checkpoint(shape)
    if found is None:
        return None, 0, max_iter
    x0, done = found
    problem.folder.note(resumed_from=done)
    return x0, done, max(1, max_iter - done)


@contextlib.contextmanager
def _counting(done: int) -> Iterator[None]:
    """Not converging after a warm start: the failure also counts the iterations before it."""
    try:
        yield
    except NotConverged as exc:
        if not done:
            raise
        raise task_failure(f"{exc} ({done + exc.report.iterations} iterations in all: the job resumed from its "
                           f"checkpoint at iteration {done})") from None


def _fit_cg(client: Any, problem: _Problem, plan: dict[str, Any], staging: str) -> dict[str, Any]:
    from service.storage.models import dual_model_meta, write_dual_model

    train = problem.operator(client, problem.x_path, None, "train", cached=True)
    rho = problem.ridge(train, plan["ridge"], plan["ridge_mode"])
    preconditioner = None
    rank = plan.get("preconditioner_rank") or 0
    if rank:
        centers = choose_centers(problem.n, min(rank, problem.n), plan["seed"])
        path = problem.folder.write_inputs("preconditioner_centers", load_input(problem.x_path)[centers])
        columns = problem.operator(client, problem.x_path, path, "columns").dense()
        preconditioner = nystrom_preconditioner(columns, centers, rho)
        del columns
    x0, done, left = _warm_start(problem, problem.y.shape, plan["max_iter"])
    with _counting(done):
        alpha, report = conjugate_gradients(
            train.matmat, problem.y, shift=rho, preconditioner=preconditioner, tol=plan["tol"], max_iter=left,
            x0=x0, callback=problem.folder.callback(plan["tol"], left, done, checkpoint=True))
    residual = float(np.linalg.norm(train.matmat(alpha) - problem.y))
    problem.folder.note(cache=train.cache_report)
    write_dual_model(Path(staging), problem.x_path, None, alpha)
    return dual_model_meta(solver="cg", n_train=problem.n, n_outputs=problem.y.shape[1], y_was_1d=problem.y_was_1d,
                           ridge_effective=rho, train_residual_norm=residual, centers=problem.n, seed=plan["seed"],
                           iterations=done + report.iterations, relative_residual=report.relative_residual)


def _fit_nystrom(client: Any, problem: _Problem, plan: dict[str, Any], staging: str) -> dict[str, Any]:
    from service.storage.models import dual_model_meta, write_dual_model

    m = min(int(plan["centers"]), problem.n)
    centers = choose_centers(problem.n, m, plan["seed"])
    centers_x = np.asarray(load_input(problem.x_path)[centers])
    centers_path = problem.folder.write_inputs("centers", centers_x)
    knm = problem.operator(client, problem.x_path, centers_path, "knm", cached=True,
                           tile=row_block_size(problem.n, m, problem.limits.tile_bytes, problem.tile))
    if plan["ridge_mode"] == "relative":
        rho = problem.ridge(problem.operator(client, problem.x_path, None, "train"), plan["ridge"], "relative")
    else:
        rho = float(plan["ridge"])
    rhs = knm.rmatmat(problem.y)
    x0, done, left = _warm_start(problem, rhs.shape, plan["max_iter"])
    kmm = problem.operator(client, centers_path, None, "kmm")
    # K_MM (M × M) is passed without a name here, so that only the solver holds it
    with _counting(done):
        beta, report = nystrom_solve(knm.normal, rhs, kmm.dense(), rho, problem.n, tol=plan["tol"], max_iter=left,
                                     x0=x0, callback=problem.folder.callback(plan["tol"], left, done, checkpoint=True),
                                     overwrite_k_mm=True)
    residual = float(np.linalg.norm(knm.matmat(beta) - problem.y))
    problem.folder.note(cache=knm.cache_report)
    write_dual_model(Path(staging), centers_x, centers, beta)
    return dual_model_meta(solver="nystrom", n_train=problem.n, n_outputs=problem.y.shape[1],
                           y_was_1d=problem.y_was_1d, ridge_effective=rho, train_residual_norm=residual, centers=m,
                           seed=plan["seed"], iterations=done + report.iterations,
                           relative_residual=report.relative_residual)


# --- trajectories -------------------------------------------------------------------------------------------------


def trajectory_driver(job_dir: str, spec: KernelSpec, plan: dict[str, Any], limits: EngineLimits) -> bool | None:
    """A ``krylov`` trajectory job: α(t) for all times by Lanczos on the tiled kernel, test predictions
    by one cross product ``K(x*, X) [α(t₁) … α(t_T)]``; writes the result into the job folder (as an
    ``eigh`` trajectory job does, plus ``solver``). ``True`` when done, ``None`` if cancelled."""
    from distributed import worker_client

    problem = _problem(job_dir, spec, plan, limits)
    problem.folder.start()
    with worker_client() as client:
        document = _solving(lambda: _krylov(client, problem, plan))
    if document is None:
        return None
    write_trajectory(problem.folder.root, document, plan["options"])
    return True


def squared_loss(predictions: np.ndarray, y: np.ndarray, normalization: str) -> np.ndarray:
    """``‖f_t − y‖² / 2N`` for every time (predictions T × n × k, y n × k), N as in :mod:`core.dynamics`."""
    with np.errstate(over="ignore", invalid="ignore"):
        return ((predictions - y[None]) ** 2).sum(axis=(1, 2)) / (2.0 * normalization_count(y.size, normalization))


def _krylov(client: Any, problem: _Problem, plan: dict[str, Any]) -> dict[str, Any]:
    from service.learning import trajectory_body
    from service.problems import ProblemError

    options = plan["options"]
    train = problem.operator(client, problem.x_path, None, "train", cached=True)
    rho = problem.ridge(train, options["ridge"], options["ridge_mode"])
    n_norm = normalization_count(problem.y.size, options["loss_normalization"])
    times = np.asarray(options["times"], dtype=np.float64)
    result = krylov_trajectory(train.matmat, problem.y, times, method=options["method"],
                               rate=options["learning_rate"] / n_norm, shift=rho, tol=options["tol"],
                               max_iter=options["max_iter"],
                               callback=problem.folder.callback(options["tol"], options["max_iter"]))
    problem.folder.note(cache=train.cache_report)
    test = test_loss = None
    x_test = plan["paths"].get("x_test")
    if x_test is not None:
        t, n, k = result.coefficients.shape
        stacked = result.coefficients.transpose(1, 0, 2).reshape(n, t * k)
        cross = problem.operator(client, x_test, problem.x_path, "test").matmat(stacked)
        test = cross.reshape(-1, t, k).transpose(1, 0, 2)
        y_test_path = plan["paths"].get("y_test")
        if y_test_path is not None:
            y_test, _ = as_targets(np.array(load_input(y_test_path), dtype=np.float64), test.shape[1], "y_test")
            test_loss = squared_loss(test, y_test, options["loss_normalization"])
    top = float(result.ritz_values[0]) + rho if result.ritz_values.size else rho
    trajectory = Trajectory(
        times=tuple(int(s) if options["method"] == "gd" else float(s) for s in times), train_loss=squared_loss(result.train_predictions, problem.y,
                                                                       options["loss_normalization"]),
        train_predictions=result.train_predictions, test_predictions=test, test_loss=test_loss,
        eigenvalues=result.ritz_values, max_stable_learning_rate=2.0 * n_norm / top if top > 0 else float("inf"))
    try:
        document = trajectory_body(trajectory)
    except ProblemError as exc:  # a diverging gradient descent
        raise task_failure(exc.detail) from None
    document["solver"] = {"type": "krylov", "iterations": result.iterations, "estimated_error": result.estimated_error}
    return document
