"""OpenAPI generation: the app's schema plus the shared problem+json responses, request-body
examples and response links."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from service.problems import PROBLEM_MEDIA_TYPE, Problem
from service.schemas.examples import REQUEST_EXAMPLES

DESCRIPTION = """\
Infinite-width neural-network kernels (NTK, NNGP), their finite-width counterparts, and
classic kernels, as a REST service.

**Conventions.** Matrices are lists of rows; `x` inputs are `n × d`. Every number must be
finite. Errors are RFC 9457 problem details (`application/problem+json`). Network kernels
follow neural-tangents: the input covariance is `⟨x, x'⟩ / d`, NTK parameterization by
default (`nngp' = w_std²·nngp + b_std²`, `ntk' = nngp' + w_std²·ntk` at a dense layer), an
activation maps `nngp` to `E[φ(u)φ(v)]` and multiplies `ntk` by `E[φ'(u)φ'(v)]`. The
`two_layer_relu` kernel is the lecture's `f(x) = m^{-1/2} Σ b_i relu(a_iᵀx)` (no `1/d`).
Synchronous requests over the size limits get `413` and should use `/v1/jobs`.
"""

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI response entry whose body is a problem document."""
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


#: Errors any /v1 operation can answer with.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem("Missing or invalid API key (when API keys are configured)."),
    406: problem("The Accept header names no media type this operation produces."),
    413: problem("The request exceeds a size limit; use /v1/jobs for large work."),
    415: problem("The request body has an unsupported Content-Type."),
    422: problem("The request is invalid; `errors` says which values and how to fix them."),
    500: problem("Unexpected server error (quote the X-Request-ID)."),
}


def _links(parameter: str, source: str, targets: dict[str, str]) -> dict[str, dict[str, Any]]:
    """OpenAPI links: link name → ``{"operationId", "parameters": {parameter: source}}`` for each target."""
    return {name: {"operationId": operation, "parameters": {parameter: source}} for name, operation in targets.items()}


_DATASET = {"GetDataset": "getDataset", "DeleteDataset": "deleteDataset"}
_MODEL = {"GetModel": "getModel", "DeleteModel": "deleteModel", "PredictWithModel": "predictWithModel",
          "ModelTrajectory": "modelTrajectory"}
_JOB = {"GetJob": "getJob", "CancelJob": "cancelJob", "DeleteJob": "deleteJob", "GetJobResult": "getJobResult"}

#: (operation id, status) → the links of that response: what a client (or the stateful phase of
#: schemathesis) can do next with the id it returned. Lists link their newest item.
LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("createDataset", "201"): _links("dataset_id", "$response.body#/id", _DATASET),
    ("listDatasets", "200"): _links("dataset_id", "$response.body#/items/0/id", _DATASET),
    ("createModel", "201"): _links("model_id", "$response.body#/id", _MODEL),
    ("listModels", "200"): _links("model_id", "$response.body#/items/0/id", _MODEL),
    ("createJob", "202"): _links("job_id", "$response.body#/id", _JOB),
    ("listJobs", "200"): _links("job_id", "$response.body#/items/0/id", _JOB),
    ("getJob", "200"): _links("job_id", "$response.body#/id", {"GetJobResult": "getJobResult",
                                                                "CancelJob": "cancelJob"}),
}


def _decorate(schema: dict[str, Any]) -> None:
    """Request-body examples (:mod:`service.schemas.examples`), response links (:data:`LINKS`), and
    the optional security of every operation."""
    for methods in schema.get("paths", {}).values():
        for operation in methods.values():
            if operation.get("security") and {} not in operation["security"]:
                operation["security"].append({})  # keys are needed only when NTK_API_KEYS is set
            operation_id = operation.get("operationId")
            examples = REQUEST_EXAMPLES.get(operation_id)
            if examples:
                operation["requestBody"]["content"]["application/json"]["examples"] = examples
            for status, response in operation.get("responses", {}).items():
                links = LINKS.get((operation_id, status))
                if links:
                    response["links"] = links


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the Problem schema in components (cached on the app)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes,
        tags=app.openapi_tags, separate_input_output_schemas=app.separate_input_output_schemas,
    )
    _decorate(schema)
    _, defs = models_json_schema([(Problem, "validation")], ref_template="#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
    app.openapi_schema = schema
    return schema
