"""``/v1/models``: fitted kernel regression as a resource; predictions and trajectories on it."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from core.kernels.spec import KernelSpec as CoreKernelSpec
from service.auth import Owner
from service.checks import (
    check_features,
    check_inputs,
    check_prediction_work,
    check_training_set,
    check_trajectory_options,
    resolve_which,
)
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.learning import (
    check_dense_model,
    fit_model,
    model_predictions,
    resolve_fit_solver,
    run_trajectory,
    trajectory_body,
)
from service.pagination import page
from service.problems import INSUFFICIENT_STORAGE, too_large
from service.resources import (
    IdempotencyKey,
    created,
    earlier_creation,
    model_document,
    not_found_response,
    owned,
    stored_spec,
)
from service.responses import ORJSONResponse
from service.routing import PageLimit, PageToken, v1_router
from service.schemas.learning import (
    ModelCreate,
    ModelList,
    ModelOut,
    PredictionOut,
    PredictionRequest,
    TrajectoryOptions,
    TrajectoryOut,
)
from service.storage.models import StoredModel
from service.storage.state import Storage

router = v1_router("models")
NOT_FOUND = not_found_response("model")


def _created(model_id: str, meta: dict[str, Any]) -> Response:
    return created(model_document(model_id, meta), f"/v1/models/{model_id}")


async def _get(request: Request, store: Storage, owner: str, model_id: str) -> StoredModel:
    """The caller's model (its arrays loaded in a worker thread), or 404."""
    return await run_compute(request, owned, "model", store.models.get, owner, model_id)


def _spec(model: StoredModel) -> CoreKernelSpec:
    return stored_spec(model.meta["kernel"])


@router.post("/models", operation_id="createModel", status_code=201, response_model=ModelOut,
             responses={201: {"headers": {"Location": {"schema": {"type": "string"}}}}, **INSUFFICIENT_STORAGE})
async def create_model(body: ModelCreate, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
                       idempotency_key: IdempotencyKey = None) -> Response:
    """Fit kernel regression with ``K + ridge·I`` by ``solver`` (auto: Cholesky while the dense solve fits
    NTK_DENSE_SOLVE_MAX_BYTES, else Nyström). A singular system with ridge 0 is a 422; so is a cg/nystrom
    solve that does not reach ``tol`` within ``max_iter`` (the detail reports the residual reached)."""
    resolve_datasets(body, store, owner)
    fingerprint, existing = await earlier_creation(request, store, owner, "models", idempotency_key, store.models.get)
    if existing is not None:
        return _created(existing.id, existing.meta)
    spec = body.kernel.to_core()
    which = resolve_which(spec, body.which)
    check_training_set(settings, spec, body.x_train, body.y_train)
    solver = resolve_fit_solver(settings, body, body.x_train.shape[0], job=False)
    fitted = await run_compute(request, fit_model, spec, which, body.x_train, body.y_train, body.ridge,
                               body.ridge_mode, solver)
    meta = {"kernel": body.kernel.model_dump(mode="json", exclude_none=True), "which": which,
            "ridge": body.ridge, "ridge_mode": body.ridge_mode}
    remember = None if idempotency_key is None else (
        lambda model_id: store.idempotency.remember(owner, "models", idempotency_key, fingerprint, model_id))
    model = await run_compute(request, store.models.create, owner, meta, body.x_train, fitted, remember)
    return _created(model.id, model.meta)


@router.get("/models", operation_id="listModels", response_model=ModelList)
async def list_models(owner: Owner, store: StorageDep, limit: PageLimit = 20,
                      page_token: PageToken = None) -> Response:
    """The caller's models, newest first."""
    models = store.models
    rows, token = page(lambda n, before: models.metadata(owner, n, before), lambda r: r[2], limit, page_token)
    return ORJSONResponse({"items": [model_document(i, meta) for i, meta, _ in rows], "next_page_token": token})


@router.get("/models/{model_id}", operation_id="getModel", response_model=ModelOut, responses=NOT_FOUND)
async def get_model(model_id: str, request: Request, owner: Owner, store: StorageDep) -> Response:
    """One model's description."""
    model = await _get(request, store, owner, model_id)
    return ORJSONResponse(model_document(model.id, model.meta))


@router.delete("/models/{model_id}", operation_id="deleteModel", status_code=204, responses=NOT_FOUND,
               response_class=Response)
async def delete_model(model_id: str, request: Request, owner: Owner, store: StorageDep) -> Response:
    """Remove the model and its stored arrays."""
    model = await _get(request, store, owner, model_id)
    await run_compute(request, store.models.delete, model)  # removes n×n arrays: off the loop
    return Response(status_code=204)


@router.post("/models/{model_id}/predictions", operation_id="predictWithModel", response_model=PredictionOut,
             responses=NOT_FOUND)
async def predict_with_model(model_id: str, body: PredictionRequest, request: Request, owner: Owner,
                             settings: SettingsDep, store: StorageDep) -> Response:
    """Mean after training for ``time`` (null: t = ∞, kernel regression) and optional variance.

    Variance: for ``which`` ntk/ntk_a, the infinite-width ensemble trained by gradient flow for
    ``time`` (Lee et al. 2019; needs the network's NNGP, computed once per model); for nngp,
    ntk_b and classic kernels the Gaussian-process posterior ``k** − k*ᵀ(K + ridge·I)⁻¹k*`` at
    t = ∞, and the same prior trained for ``time`` otherwise.

    Models of solver cg or nystrom predict ``K(x*, centers) β`` at t = ∞ only: ``time`` or
    ``variance`` on them is a 422.
    """
    resolve_datasets(body, store, owner)
    model = await _get(request, store, owner, model_id)
    if body.time is not None:
        check_dense_model(model, ["body", "time"], "a prediction at a finite training time")
    if body.variance:
        check_dense_model(model, ["body", "variance"], "the predictive variance")
    check_features(model.x_centers, body.x_test, ("x_train", "x_test"))
    check_prediction_work(settings, _spec(model), body.x_test, model.x_centers.shape[0])
    entries = body.x_test.shape[0] * model.n_outputs
    if entries > settings.max_result_entries:
        raise too_large("max_result_entries", f"{entries} predictions is over {settings.max_result_entries}")
    mean, variance = await run_compute(request, model_predictions, model, _spec(model), body.x_test, body.time,
                                       body.variance, body.learning_rate, body.loss_normalization)
    return ORJSONResponse({"mean": mean, "variance": variance})


@router.post("/models/{model_id}/trajectory", operation_id="modelTrajectory", response_model=TrajectoryOut,
             responses=NOT_FOUND)
async def model_trajectory(model_id: str, body: TrajectoryOptions, request: Request, owner: Owner,
                           settings: SettingsDep, store: StorageDep) -> Response:
    """The linearized network's training trajectory on the model's data (eigenbasis computed once, kept).
    Cholesky models only: on a cg/nystrom model it is a 422 (use a ``trajectory`` job with solver krylov)."""
    resolve_datasets(body, store, owner)
    model = await _get(request, store, owner, model_id)
    check_dense_model(model, ["path", "model_id"], "a training trajectory (use a trajectory job with solver \"krylov\")")
    check_trajectory_options(settings, body, model.x_centers, model.n_outputs)
    if body.x_test is not None:  # the test × training kernel (the training one exists already)
        check_inputs(settings, _spec(model), body.x_test, "x_test", model.x_centers.shape[0])
    fitted = model.dense()
    y = fitted.y[:, 0] if fitted.y_was_1d else fitted.y
    basis = await run_compute(request, model.basis)
    result = await run_compute(request, run_trajectory, _spec(model), model.meta["which"], fitted.kernel, y,
                               model.x_centers, fitted.ridge_effective, body, basis)
    return ORJSONResponse(trajectory_body(result))
