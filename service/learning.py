"""Kernel regression, trajectories and spectra on request data: the glue between the HTTP
schemas and ``core`` (kernels → regression / dynamics / solvers). The compute functions here are
CPU-bound and run in a worker thread (``service.compute.run_compute``).

It also holds the solver rules shared by synchronous fits and job planning (api-v1.md, "Training
sets beyond one machine's memory"): what ``"auto"`` picks, the default number of Nyström centers,
and which request combinations are refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import numpy as np

from core import kernels as core_kernels
from core.dynamics import (
    EigenBasis,
    Trajectory,
    normalization_count,
    spectrum,
    trajectory,
)
from core.kernels.rules import KernelOverflow
from core.kernels.spec import KernelSpec
from core.regression import (
    DualFit,
    KernelRidgeFit,
    SingularKernelError,
    effective_ridge,
    fit,
    fit_cg,
    fit_nystrom,
    gp_variance,
    ntk_ensemble_variance,
    predict,
    predict_dual,
    variance_model,
)
from core.solvers import NotConverged
from service.matrices import ensure_finite
from service.problems import ProblemError, invalid, too_large
from service.settings import Settings
from service.storage.models import StoredModel

F = TypeVar("F", bound=Callable[..., Any])


def client_errors(fn: F) -> F:
    """Core ``ValueError``s about the request's data become 422 problems (singular → names ridge)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotConverged as exc:
            raise ProblemError(422, f"The solver did not converge: {exc}.", slug="not-converged",
                               title="The solver did not converge",
                               errors=[{"loc": ["body", "max_iter"], "msg": str(exc)}]) from None
        except SingularKernelError as exc:
            raise invalid(["body", "ridge"], str(exc)) from None
        except KernelOverflow:
            raise  # a 422 at the layer (service.errors)
        except ValueError as exc:
            raise ProblemError(422, str(exc), slug="unprocessable", title="Cannot compute this request",
                               errors=[{"loc": ["body"], "msg": str(exc)}]) from None

    return wrapper  # type: ignore[return-value]


def _gram(spec: KernelSpec, name: str, x1: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
    matrix = core_kernels.gram(spec, x1, x2, outputs=[name])[name]
    ensure_finite({name: matrix}, "float64")
    return matrix


#: Dense solves hold two n × n float64 matrices: K and its Cholesky factor (or eigenvectors).
#: Peak bytes per entry of the n × n matrix that a dense solve takes in one worker (measured by
#: bench/scale.py at n = 20 000: cholesky 10.0 GB ≈ 25·n²; an eigh job outgrew an 11.8 GiB worker:
#: K, eigenvectors and LAPACK's divide-and-conquer workspace).
DENSE_BYTES_PER_ENTRY = {"cholesky": 25, "eigh": 40}


@dataclass(frozen=True)
class FitSolver:
    """A fit's solver with every choice resolved (``"auto"`` decided, centers and rank counted)."""

    type: str  # cholesky | cg | nystrom
    tol: float = 1e-8
    max_iter: int = 1000
    seed: int = 0
    centers: int | None = None  # nystrom: M
    preconditioner_rank: int | None = None  # cg: min(n, NTK_CG_PRECONDITIONER_RANK); 0 = none


def dense_solve_fits(settings: Settings, n: int, job: bool, kind: str = "cholesky") -> bool:
    """The ``"auto"`` rule: the dense solve ``kind`` while its peak (:data:`DENSE_BYTES_PER_ENTRY`
    · n²) fits ``settings.dense_solve_budget`` (and, for a job, n ≤ ``max_job_train_size``, the
    dense jobs' bound)."""
    return DENSE_BYTES_PER_ENTRY[kind] * n * n <= settings.dense_solve_budget and (
        not job or n <= settings.max_job_train_size)


def default_centers(settings: Settings, n: int) -> int:
    """``min(n, max_nystrom_centers, max(1000, ⌈√n · ln n⌉))``: √n·log n centers suffice for
    Nyström KRR's statistical rate (Rudi et al., Falkon); never fewer than 1000 (exact up to n = 1000)."""
    return min(n, settings.max_nystrom_centers, max(1000, math.ceil(math.sqrt(n) * math.log(n))))


def resolve_fit_solver(settings: Settings, body: Any, n: int, *, job: bool) -> FitSolver:
    """The request's ``solver``, ``tol``, ``max_iter``, ``centers``, ``seed`` for ``n`` training points.

    422 (``centers``): centers with solver cholesky or cg, or more centers than training points.
    413: more centers than ``max_nystrom_centers``. With ``"auto"`` the centers are used if it picks nystrom.
    """
    if body.centers is not None:
        if body.solver in ("cholesky", "cg"):
            raise invalid(["body", "centers"], f"centers applies to solver \"nystrom\" (or \"auto\"), not "
                          f"\"{body.solver}\", which uses every training point; remove centers or set solver "
                          "\"nystrom\"")
        if body.centers > n:
            raise invalid(["body", "centers"], f"centers = {body.centers} is more than the {n} training points")
        if body.centers > settings.max_nystrom_centers:
            raise too_large("max_nystrom_centers", f"{body.centers} centers is over {settings.max_nystrom_centers}",
                            "Use fewer centers (the M × M matrices are held by one process) or raise the limit.")
    solver = body.solver
    if solver == "auto":
        solver = "cholesky" if dense_solve_fits(settings, n, job) else "nystrom"
    common = {"tol": float(body.tol), "max_iter": int(body.max_iter), "seed": int(body.seed)}
    if solver == "nystrom":
        return FitSolver("nystrom", centers=body.centers or default_centers(settings, n), **common)
    if solver == "cg":
        return FitSolver("cg", preconditioner_rank=min(n, settings.cg_preconditioner_rank), **common)
    return FitSolver("cholesky", **common)


def resolve_trajectory_solver(settings: Settings, solver: str, n: int) -> str:
    """``eigh`` or ``krylov`` (``"auto"``: eigh while the dense solve fits, as for fits)."""
    if solver == "auto":
        return "eigh" if dense_solve_fits(settings, n, job=True, kind="eigh") else "krylov"
    return solver


@client_errors
def fit_model(spec: KernelSpec, which: str, x: np.ndarray, y: np.ndarray, ridge: float, mode: str,
              solver: FitSolver | None = None) -> KernelRidgeFit | DualFit:
    """Gram of ``which`` on the training points, then the fit of ``solver`` (default cholesky) on it
    (in-process: the dense Gram is allowed at the sizes this runs at)."""
    kernel = _gram(spec, which, x)
    if solver is None or solver.type == "cholesky":
        return fit(kernel, y, ridge=ridge, ridge_mode=mode)  # type: ignore[arg-type]
    if solver.type == "cg":
        return fit_cg(kernel, y, ridge=ridge, ridge_mode=mode, tol=solver.tol,  # type: ignore[arg-type]
                      max_iter=solver.max_iter, preconditioner_rank=solver.preconditioner_rank or 0,
                      seed=solver.seed)
    assert solver.centers is not None
    return fit_nystrom(kernel, y, centers=solver.centers, ridge=ridge, ridge_mode=mode,  # type: ignore[arg-type]
                       tol=solver.tol, max_iter=solver.max_iter, seed=solver.seed)


def check_dense_model(model: StoredModel, loc: list[str | int], what: str) -> None:
    """422 at ``loc`` when ``model`` is a cg/nystrom model, which cannot do ``what``."""
    if model.solver != "cholesky":
        raise invalid(loc, f"model {model.id} was fitted with solver \"{model.solver}\", which keeps "
                      f"coefficients on its centers but not the training kernel (nor its factor or eigenbasis): {what} needs a "
                      "cholesky model. It predicts means at t = ∞ (time null, variance false).")


@client_errors
def model_predictions(model: StoredModel, spec: KernelSpec, x_test: np.ndarray, time: float | None,
                      variance: bool, learning_rate: float, normalization: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (n_test × k) at ``time`` and, if asked, the predictive variance (module docstring of api).
    Dual (cg, nystrom) models: the mean ``K(x*, centers) β`` at t = ∞ only (the router checks)."""
    which = model.meta["which"]
    if isinstance(model.fit, DualFit):
        return predict_dual(model.fit, _gram(spec, which, x_test, model.x_centers)), None
    fitted = model.dense()
    cross = _gram(spec, which, x_test, model.x_centers)
    if time is not None:
        model.basis()  # loads or computes (and persists) the eigenbasis once
    mean = predict(fitted, cross, time=time, learning_rate=learning_rate, normalization=normalization)  # type: ignore[arg-type]
    if not variance:
        return mean, None
    n_norm = normalization_count(fitted.y.size, normalization)  # type: ignore[arg-type]
    kind = variance_model(which, time)
    if kind == "ntk_ensemble":
        nngp_train = model.extra("nngp", lambda: _gram(spec, "nngp", model.x_centers))
        var = ntk_ensemble_variance(
            fitted.kernel, cross, nngp_train, _gram(spec, "nngp", x_test, model.x_centers),
            core_kernels.gram_diagonal(spec, x_test, outputs=["nngp"])["nngp"], time=time,
            learning_rate=learning_rate, normalization_n=n_norm, ridge_effective=fitted.ridge_effective,
            basis=model.basis(),
        )
    else:
        diag = core_kernels.gram_diagonal(spec, x_test, outputs=[which])[which]
        if kind == "gp_posterior":
            var = gp_variance(fitted, cross, diag)
        else:  # "gp_trained": the same prior trained for a finite time, the ensemble formula with Θ = 𝒦 = K
            var = ntk_ensemble_variance(fitted.kernel, cross, fitted.kernel, cross, diag, time=time,
                                        learning_rate=learning_rate, normalization_n=n_norm,
                                        ridge_effective=fitted.ridge_effective, basis=model.basis())
    return mean, var


@client_errors
def run_trajectory(spec: KernelSpec, which: str, kernel_train: np.ndarray, y: np.ndarray, x_train: np.ndarray,
                   ridge_effective: float, options: Any, basis: EigenBasis | None = None) -> Trajectory:
    """The trajectory at ``options.times`` from one eigendecomposition (``basis`` if given)."""
    cross = None if options.x_test is None else _gram(spec, which, options.x_test, x_train)
    times = [int(t) if options.method == "gd" else float(t) for t in options.times]
    return trajectory(kernel_train, y, times, learning_rate=options.learning_rate, method=options.method,
                      normalization=options.loss_normalization, ridge_effective=ridge_effective,
                      kernel_test_train=cross, y_test=options.y_test, basis=basis)


@client_errors
def one_shot_trajectory(spec: KernelSpec, which: str, body: Any) -> Trajectory:
    kernel_train = _gram(spec, which, body.x_train)
    rho = effective_ridge(kernel_train, body.ridge, body.ridge_mode)
    return run_trajectory(spec, which, kernel_train, body.y_train, body.x_train, rho, body)


@client_errors
def kernel_spectrum(spec: KernelSpec, which: str, x: np.ndarray, top_k: int | None) -> dict[str, Any]:
    result = spectrum(_gram(spec, which, x), top_k)
    return {"eigenvalues": result.eigenvalues, "min_eigenvalue": result.min_eigenvalue, "trace": result.trace,
            "condition_number": result.condition_number if np.isfinite(result.condition_number) else None}


def as_matrices(stack: np.ndarray) -> np.ndarray:
    """T × n (one output) → T × n × 1: the API always returns n × k matrices."""
    return stack[:, :, None] if stack.ndim == 2 else stack


def trajectory_body(result: Trajectory) -> dict[str, Any]:
    """The response document; 422 if a diverging run overflowed."""
    arrays = {"train_loss": result.train_loss, "train_predictions": result.train_predictions}
    if result.test_predictions is not None:
        arrays["test_predictions"] = result.test_predictions
    if result.test_loss is not None:
        arrays["test_loss"] = result.test_loss
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise ProblemError(422, f"Training diverged ({name} overflowed): use a learning_rate below "
                               f"max_stable_learning_rate = {result.max_stable_learning_rate:.6g}.",
                               slug="diverged", title="Training diverged",
                               errors=[{"loc": ["body", "learning_rate"], "msg": "training diverges"}])
    lr = result.max_stable_learning_rate
    return {
        "times": list(result.times),
        "train_loss": result.train_loss,
        "train_predictions": as_matrices(result.train_predictions),
        "test_predictions": None if result.test_predictions is None else as_matrices(result.test_predictions),
        "test_loss": result.test_loss,
        "eigenvalues": result.eigenvalues,
        "max_stable_learning_rate": lr if np.isfinite(lr) else None,
    }
