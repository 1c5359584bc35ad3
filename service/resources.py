"""What the resource routers (datasets, models, jobs) share: the owned-resource lookup, 404s,
creation responses, the Idempotency-Key header, kernel specs stored as JSON and the model document.

Routers import from here, never from one another."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Header, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from core.kernels.spec import KernelSpec as CoreKernelSpec
from service.jobs.ledger import Job
from service.openapi_doc import problem
from service.problems import ProblemError
from service.responses import ORJSONResponse
from service.schemas.kernels import KernelSpec
from service.storage.models import solver_summary
from service.storage.state import Storage

_KERNEL = TypeAdapter(KernelSpec)
T = TypeVar("T")

#: ``Idempotency-Key``: a retry with the same key and body returns the original resource.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                              description="Retry-safe creation: the same key and body return the "
                                                          "original resource; the same key with another body is 422.")]


async def earlier_creation(request: Request, store: Storage, owner: str, endpoint: str, key: str | None,
                           fetch: Callable[[str, str], T | None]) -> tuple[str, T | None]:
    """``(fingerprint of this body, what an earlier request with the same key and body created)``.

    422 if the key was used with another body; ``fetch(owner, id)`` loads the earlier resource.
    """
    fingerprint = hashlib.sha256(await request.body()).hexdigest()
    if key is None:
        return fingerprint, None
    earlier = store.idempotency.lookup(owner, endpoint, key, fingerprint)
    return fingerprint, fetch(owner, earlier) if earlier else None


def not_found_response(kind: str) -> dict[int | str, dict[str, Any]]:
    return {404: problem(f"No such {kind} for this API key.")}


def not_found(kind: str, resource_id: str) -> ProblemError:
    return ProblemError(404, f"No {kind} {resource_id!r} for this API key.", slug="not-found")


def owned(kind: str, fetch: Callable[[str, str], T | None], owner: str, resource_id: str) -> T:
    """The ``kind`` (dataset, model, job) ``resource_id`` of ``owner`` loaded by ``fetch(owner, id)``, or 404."""
    resource = fetch(owner, resource_id)
    if resource is None:
        raise not_found(kind, resource_id)
    return resource


def created(document: Any, location: str, status_code: int = 201) -> Response:
    return ORJSONResponse(document, status_code=status_code, headers={"Location": location})


def stored_spec(kernel: dict[str, Any]) -> CoreKernelSpec:
    """The core spec of a kernel stored as request JSON (validated again, never trusted)."""
    return _KERNEL.validate_python(kernel).to_core()


def job_spec(job: Job) -> CoreKernelSpec:
    """The core spec of a job's kernel (the job runner rebuilds it from the stored request)."""
    return stored_spec(job.request["kernel"])


def model_document(model_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The public description of a stored model (ModelOut)."""
    cond = meta["condition_number"]
    solver = meta.get("solver") or solver_summary("cholesky", meta["n_train"])  # models from before issue #10
    return {"id": model_id, "n_train": meta["n_train"], "n_outputs": meta["n_outputs"], "kernel": meta["kernel"],
            "which": meta["which"], "ridge": meta["ridge"], "ridge_mode": meta["ridge_mode"],
            "train_residual_norm": meta["train_residual_norm"],
            "condition_number": cond if cond is not None and cond < float("inf") else None,
            "solver": solver, "created_at": meta["created_at"]}
