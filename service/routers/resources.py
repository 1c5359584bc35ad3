"""What the resource routers (datasets, models, jobs) share: storage access, 404s, creation
responses, the Idempotency-Key header, and kernel specs stored as JSON."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Request
from pydantic import TypeAdapter
from starlette.responses import Response

from core.kernels.spec import KernelSpec as CoreKernelSpec
from service.openapi_doc import problem
from service.problems import ProblemError
from service.responses import ORJSONResponse
from service.schemas.kernels import KernelSpec
from service.storage.state import Storage

_KERNEL = TypeAdapter(KernelSpec)

#: ``Idempotency-Key``: a retry with the same key and body returns the original resource.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                              description="Retry-safe creation: the same key and body return the "
                                                          "original resource; the same key with another body is 422.")]


def storage(request: Request) -> Storage:
    return request.app.state.storage


def not_found_response(kind: str) -> dict[int | str, dict[str, Any]]:
    return {404: problem(f"No such {kind} for this API key.")}


def not_found(kind: str, resource_id: str) -> ProblemError:
    return ProblemError(404, f"No {kind} {resource_id!r} for this API key.", slug="not-found")


def created(document: Any, location: str, status_code: int = 201) -> Response:
    return ORJSONResponse(document, status_code=status_code, headers={"Location": location})


def stored_spec(kernel: dict[str, Any]) -> CoreKernelSpec:
    """The core spec of a kernel stored as request JSON (validated again, never trusted)."""
    return _KERNEL.validate_python(kernel).to_core()
