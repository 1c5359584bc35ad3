"""``POST /v1/experiments/lazy-training``: the lecture's argument, made observable."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import Request
from starlette.responses import Response

from core import empirical as core_empirical
from core.dynamics import Trajectory
from core.kernels.spec import Dense, Network
from service.auth import Owner
from service.checks import check_features, check_inputs, check_layers, check_targets
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.learning import client_errors
from service.problems import invalid, too_large
from service.responses import ORJSONResponse
from service.routing import v1_router
from service.schemas.experiments import LazyTrainingOut, LazyTrainingRequest

router = v1_router("experiments")


def _ntk_side(initial: str, trajectory: Trajectory) -> dict[str, Any]:
    return {"initial_function": initial, "train_loss": trajectory.train_loss,
            "test_predictions": trajectory.test_predictions, "test_loss": trajectory.test_loss}


@client_errors
def _run(body: LazyTrainingRequest, spec: Any) -> dict[str, Any]:
    result = core_empirical.lazy_training(
        spec, body.x_train, body.y_train, width=body.width, seed=body.seed, steps=body.steps,
        learning_rate=body.learning_rate, x_test=body.x_test, y_test=body.y_test,
        normalization=body.loss_normalization, dtype=np.dtype(body.dtype),
    )
    lr = result.max_stable_learning_rate
    return {
        "steps": list(result.steps), "width": result.width, "seed": result.seed,
        "parameter_count": result.parameter_count,
        "network": {"train_loss": result.train_loss, "test_predictions": result.test_predictions,
                    "test_loss": result.test_loss, "relative_parameter_change": result.relative_parameter_change,
                    "relative_kernel_change": result.relative_kernel_change},
        "ntk": _ntk_side("zero", result.ntk_from_zero),
        "ntk_from_network_init": _ntk_side("network", result.ntk_from_network_init),
        "gap_train": result.gap_train, "gap_test": result.gap_test,
        "max_stable_learning_rate": lr if np.isfinite(lr) else None,
    }


@router.post("/experiments/lazy-training", operation_id="lazyTraining", response_model=LazyTrainingOut)
async def lazy_training(
    body: LazyTrainingRequest, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
) -> Response:
    """Train a real network of ``width`` by gradient descent beside its NTK prediction.

    Both NTK predictions run gradient descent with the same learning rate and steps: ``ntk``
    from ``f_0 = 0`` (the infinite ensemble's mean, as ``/v1/trajectories``) and
    ``ntk_from_network_init`` from the network's own ``f_0`` (what linearization predicts,
    the fair comparison for one network). As width grows the gap and both relative changes
    shrink roughly like ``1/√width``.
    """
    resolve_datasets(body, store, owner)
    spec = body.kernel.to_core()
    check_layers(settings, spec)
    if isinstance(spec, Network) and not isinstance(spec.layers[-1], Dense):
        raise invalid(["body", "kernel", "layers"], "a finite network needs a dense readout: end the layers with "
                      "{\"type\": \"dense\"}")
    check_targets(body.y_train, body.x_train, ("y_train", "x_train"))
    if body.y_train.ndim == 2 and body.y_train.shape[1] != 1:
        raise invalid(["body", "y_train"], "the network has one output: send y_train as a vector (or n × 1)")
    if body.x_test is not None:
        check_features(body.x_train, body.x_test, ("x_train", "x_test"))
    if body.y_test is not None:
        if body.x_test is None:
            raise invalid(["body", "y_test"], "y_test needs x_test (the test inputs it belongs to)")
        check_targets(body.y_test, body.x_test, ("y_test", "x_test"))
    if sorted(set(body.steps)) != body.steps:
        raise invalid(["body", "steps"], "steps must be strictly increasing step counts, e.g. [0, 10, 100]")
    if body.width > settings.max_empirical_width:
        raise too_large("max_empirical_width", f"width {body.width} is over {settings.max_empirical_width}")
    n, d = body.x_train.shape[0], body.x_train.shape[1:]  # d: the row shape (d,), (L, C) or (H, W, C)
    m = 0 if body.x_test is None else body.x_test.shape[0]
    check_inputs(settings, spec, body.x_train, "x_train", n + m)  # the infinite-width side: rank, fit, work
    try:  # the finite network: fits its input rows
        work = core_empirical.lazy_training_work(spec, n, m, d, body.width, body.steps[-1], len(body.steps))
    except ValueError as exc:
        raise invalid(["body", "kernel"], str(exc)) from None
    if work > settings.max_lazy_training_work:
        raise too_large("max_lazy_training_work", f"this experiment needs about {work:.3g} multiply-adds, over "
                        f"{settings.max_lazy_training_work:.3g}; use fewer steps, points or a smaller width")
    memory = core_empirical.lazy_training_memory_entries(spec, n, m, d, body.width)
    if memory > settings.max_empirical_work:
        raise too_large("max_empirical_work", f"this network and data need about {memory} float entries at once")
    return ORJSONResponse(await run_compute(request, _run, body, spec))
