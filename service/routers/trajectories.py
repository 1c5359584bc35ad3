"""``POST /v1/trajectories``: a one-shot training trajectory (kernel and data inline)."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from service.auth import Owner
from service.checks import check_inputs, check_training_set, check_trajectory_options, resolve_which
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.learning import one_shot_trajectory, trajectory_body
from service.responses import ORJSONResponse
from service.routing import v1_router
from service.schemas.learning import TrajectoryOut, TrajectoryRequest

router = v1_router("trajectories")


@router.post("/trajectories", operation_id="computeTrajectory", response_model=TrajectoryOut)
async def compute_trajectory(
    body: TrajectoryRequest, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
) -> Response:
    """Training dynamics of the linearized network from f₀ = 0 under ``L = (1/2N)Σ‖f − y‖²``.

    flow: ``α(t) = K_r⁻¹(I − e^{−ηK_r t/N}) y``; gd: ``α(s) = K_r⁻¹(I − (I − ηK_r/N)^s) y``;
    ``f_t(X) = Kα(t)``, ``f_t(x*) = K(x*, X)α(t)``; all times from one eigendecomposition.
    """
    resolve_datasets(body, store, owner)
    spec = body.kernel.to_core()
    which = resolve_which(spec, body.which)
    check_training_set(settings, spec, body.x_train, body.y_train)
    n_outputs = 1 if body.y_train.ndim == 1 else body.y_train.shape[1]
    check_trajectory_options(settings, body, body.x_train, n_outputs)
    if body.x_test is not None:  # the test × training kernel, beside the training one
        check_inputs(settings, spec, body.x_test, "x_test", body.x_train.shape[0])
    result = await run_compute(request, one_shot_trajectory, spec, which, body)
    return ORJSONResponse(trajectory_body(result))
