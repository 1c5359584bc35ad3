"""Kernel regression, trajectories and spectra on request data: the glue between the HTTP
schemas and ``core`` (kernels → regression / dynamics). Every function here is CPU-bound and
runs in a worker thread (``service.compute.run_compute``)."""

from __future__ import annotations

from collections.abc import Callable
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
    KernelRidgeFit,
    SingularKernelError,
    effective_ridge,
    fit,
    gp_variance,
    ntk_ensemble_variance,
    predict,
    variance_model,
)
from service.matrices import ensure_finite
from service.problems import ProblemError, invalid
from service.storage.models import StoredModel

F = TypeVar("F", bound=Callable[..., Any])


def client_errors(fn: F) -> F:
    """Core ``ValueError``s about the request's data become 422 problems (singular → names ridge)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
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


@client_errors
def fit_model(spec: KernelSpec, which: str, x: np.ndarray, y: np.ndarray, ridge: float, mode: str) -> KernelRidgeFit:
    """Gram of ``which`` on the training points, then a Cholesky fit."""
    return fit(_gram(spec, which, x), y, ridge=ridge, ridge_mode=mode)  # type: ignore[arg-type]


@client_errors
def model_predictions(model: StoredModel, spec: KernelSpec, x_test: np.ndarray, time: float | None,
                      variance: bool, learning_rate: float, normalization: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (n_test × k) at ``time`` and, if asked, the predictive variance (module docstring of api)."""
    which = model.meta["which"]
    fitted = model.fit
    cross = _gram(spec, which, x_test, model.x_train)
    if time is not None:
        model.basis()  # loads or computes (and persists) the eigenbasis once
    mean = predict(fitted, cross, time=time, learning_rate=learning_rate, normalization=normalization)  # type: ignore[arg-type]
    if not variance:
        return mean, None
    n_norm = normalization_count(fitted.y.size, normalization)  # type: ignore[arg-type]
    kind = variance_model(which, time)
    if kind == "ntk_ensemble":
        nngp_train = model.extra("nngp", lambda: _gram(spec, "nngp", model.x_train))
        var = ntk_ensemble_variance(
            fitted.kernel, cross, nngp_train, _gram(spec, "nngp", x_test, model.x_train),
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
