"""The request schemas say what the server enforces.

Each probe takes a working request-body example from the document, changes one value, and
sends it: where the server refuses it (422), the document's schema must refuse it too (so
generated SDKs and schemathesis validate as the server does); where the server accepts it, the
schema must accept it. The values are boundary cases of the server's own rules (empty arrays at
every nesting level, zero where a number must be positive, integral floats, bounds on seeds,
counts and list lengths), checked against the JSON Schema validator, not the server's models.
"""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jsonschema
import pytest

from service.__main__ import OPENAPI_PATH
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio
SPEC = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
OPERATIONS = {op["operationId"]: (method.upper(), path, op)
              for path, methods in SPEC["paths"].items() for method, op in methods.items()}
REFUSED, ACCEPTED = "refused", "accepted"

#: (operation id, example name, location in the body, new value, what server and document do).
PROBES: list[tuple[str, str, tuple[str | int, ...], Any, str]] = [
    # classic kernels: strictly positive lengthscales, integer degrees in [1, 1000], c ≥ 0
    ("computeKernels", "rbf", ("kernel", "lengthscale"), 0, REFUSED),
    ("computeKernels", "rbf", ("kernel", "lengthscale"), -0.5, REFUSED),
    ("computeKernels", "rbf", ("kernel", "lengthscale"), 1e-300, ACCEPTED),
    ("computeKernels", "polynomial", ("kernel", "degree"), 0, REFUSED),
    ("computeKernels", "polynomial", ("kernel", "degree"), 1001, REFUSED),
    ("computeKernels", "polynomial", ("kernel", "degree"), 2.5, REFUSED),
    ("computeKernels", "polynomial", ("kernel", "degree"), True, REFUSED),
    ("computeKernels", "polynomial", ("kernel", "degree"), "2", REFUSED),
    ("computeKernels", "polynomial", ("kernel", "degree"), 3.0, ACCEPTED),
    ("computeKernels", "polynomial", ("kernel", "c"), -1, REFUSED),
    ("computeKernels", "polynomial", ("kernel", "c"), 0, ACCEPTED),
    # inputs: non-empty at every nesting level, numbers only, dataset ids of the ds_ form
    ("computeKernels", "rbf", ("x1",), [], REFUSED),
    ("computeKernels", "rbf", ("x1",), [[]], REFUSED),
    ("computeKernels", "rbf", ("x1",), [[[]]], REFUSED),
    ("computeKernels", "rbf", ("x1",), [[[[]]]], REFUSED),
    ("computeKernels", "rbf", ("x1",), [[1.0, True]], REFUSED),
    ("computeKernels", "rbf", ("x1",), [["1.0", 2.0]], REFUSED),
    ("computeKernels", "rbf", ("x1",), "x_train", REFUSED),
    ("computeKernels", "rbf", ("x2",), [], REFUSED),
    ("computeKernels", "rbf", ("x2",), None, ACCEPTED),
    ("computeKernels", "rbf", ("outputs",), [], REFUSED),
    ("computeKernels", "rbf", ("outputs",), ["kernel"] * 5, REFUSED),
    ("computeKernels", "rbf", ("outputs",), ["gram"], REFUSED),
    ("computeKernels", "rbf", ("dtype",), "float16", REFUSED),
    ("computeKernels", "rbf", ("typo",), 1, REFUSED),
    # network layers: w_std > 0, b_std ≥ 0 or null, at least one layer, filters of 1–2 positive sizes
    ("computeKernels", "relu_network", ("kernel", "layers"), [], REFUSED),
    ("computeKernels", "relu_network", ("kernel", "layers", 0, "w_std"), 0, REFUSED),
    ("computeKernels", "relu_network", ("kernel", "layers", 0, "b_std"), -0.1, REFUSED),
    ("computeKernels", "relu_network", ("kernel", "layers", 0, "b_std"), None, ACCEPTED),
    ("computeKernels", "relu_network", ("kernel", "layers", 0, "width"), 0, REFUSED),
    ("computeKernels", "relu_network", ("kernel", "parameterization"), "mup", REFUSED),
    ("computeKernels", "convolutional", ("kernel", "layers", 0, "filter_shape"), [], REFUSED),
    ("computeKernels", "convolutional", ("kernel", "layers", 0, "filter_shape"), [0, 3], REFUSED),
    ("computeKernels", "convolutional", ("kernel", "layers", 0, "filter_shape"), [3, 3, 3], REFUSED),
    ("computeKernels", "convolutional", ("kernel", "layers", 0, "filter_shape"), [3.0, 3.0], ACCEPTED),
    # finite networks: width ≥ 1, seeds in [0, 2**53)
    ("computeEmpiricalKernels", "finite_relu_network", ("width",), 0, REFUSED),
    ("computeEmpiricalKernels", "finite_relu_network", ("seed",), -1, REFUSED),
    ("computeEmpiricalKernels", "finite_relu_network", ("seed",), 2**53, REFUSED),
    ("computeEmpiricalKernels", "finite_relu_network", ("seed",), 2**53 - 1, ACCEPTED),
    ("lazyTraining", "two_layer_relu", ("width",), 0, REFUSED),
    ("lazyTraining", "two_layer_relu", ("steps",), [], REFUSED),
    ("lazyTraining", "two_layer_relu", ("steps",), [-1, 10], REFUSED),
    ("lazyTraining", "two_layer_relu", ("learning_rate",), 0, REFUSED),
    ("lazyTraining", "two_layer_relu", ("y_train",), [], REFUSED),
    # fits: non-empty targets (vector or matrix), ridge ≥ 0, known modes and matrices
    ("createModel", "two_layer_relu", ("y_train",), [], REFUSED),
    ("createModel", "two_layer_relu", ("y_train",), [[]], REFUSED),
    ("createModel", "two_layer_relu", ("y_train",), [[0.0], [0.1], [0.2], [0.3], [0.4], [0.5]], ACCEPTED),
    ("createModel", "two_layer_relu", ("ridge",), -1e-3, REFUSED),
    ("createModel", "two_layer_relu", ("ridge_mode",), "diag", REFUSED),
    ("createModel", "two_layer_relu", ("which",), "ntk_c", REFUSED),
    # trajectories: 1–1000 non-negative times, positive learning rates, non-empty test targets
    ("computeTrajectory", "relu_network_flow", ("times",), [], REFUSED),
    ("computeTrajectory", "relu_network_flow", ("times",), [-1.0], REFUSED),
    ("computeTrajectory", "relu_network_flow", ("times",), [1.0] * 1001, REFUSED),
    ("computeTrajectory", "relu_network_flow", ("times",), [0.5] * 1000, ACCEPTED),
    ("computeTrajectory", "relu_network_flow", ("learning_rate",), 0, REFUSED),
    ("computeTrajectory", "relu_network_flow", ("y_test",), [], REFUSED),
    ("computeTrajectory", "relu_network_flow", ("method",), "adam", REFUSED),
    ("computeTrajectory", "relu_network_flow", ("loss_normalization",), "max", REFUSED),
    ("modelTrajectory", "flow", ("times",), [], REFUSED),
    ("modelTrajectory", "flow", ("x_test",), [[]], REFUSED),
    # predictions: time ≥ 0 or null, a boolean variance, positive learning rates
    ("predictWithModel", "converged", ("x_test",), [], REFUSED),
    ("predictWithModel", "converged", ("variance",), "yes", REFUSED),
    ("predictWithModel", "early_stopped", ("time",), -1.0, REFUSED),
    ("predictWithModel", "early_stopped", ("time",), 0, ACCEPTED),
    ("predictWithModel", "early_stopped", ("learning_rate",), 0, REFUSED),
    # spectra: top_k ≥ 1
    ("computeSpectrum", "rbf_top_k", ("top_k",), 0, REFUSED),
    ("computeSpectrum", "rbf_top_k", ("top_k",), 2.0, ACCEPTED),
    # jobs: dataset ids of the ds_ form, known devices and outputs
    ("createJob", "gram", ("x1",), "my-dataset", REFUSED),
    ("createJob", "gram", ("outputs",), [], REFUSED),
    ("createJob", "gram", ("device",), "tpu", REFUSED),
    ("createJob", "fit", ("ridge",), -1.0, REFUSED),
    ("createJob", "trajectory", ("times",), [], REFUSED),
]


def _with(body: dict[str, Any], location: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    target: Any = body
    for key in location[:-1]:
        target = target[key]
    target[location[-1]] = value
    return body


def _schema_accepts(operation_id: str, body: dict[str, Any]) -> bool:
    schema = OPERATIONS[operation_id][2]["requestBody"]["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]})
    return validator.is_valid(body)


def _example(operation_id: str, name: str) -> dict[str, Any]:
    return OPERATIONS[operation_id][2]["requestBody"]["content"]["application/json"]["examples"][name]["value"]


def test_every_example_is_valid_against_its_schema() -> None:
    for operation_id, (_, _, operation) in OPERATIONS.items():
        content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        for name, example in content.get("examples", {}).items():
            assert _schema_accepts(operation_id, example["value"]), f"{operation_id}:{name}"


def _pydantic_keywords(node: Any, where: str = "#") -> list[str]:
    """Places where a schema carries pydantic's names for bounds instead of JSON Schema's."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("gt", "ge", "lt", "le", "min_length", "max_length") and not where.endswith("/properties"):
                found.append(f"{where}/{key}")
            found += _pydantic_keywords(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _pydantic_keywords(value, f"{where}/{i}")
    return found


def test_bounds_use_json_schema_keywords() -> None:
    """pydantic publishes a bound it cannot apply (e.g. on an int/float union) under its own name
    (``"gt": 0``), which validators and SDK generators ignore: none may be left."""
    assert _pydantic_keywords(SPEC) == []


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("constraints")))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c):
        yield c


@pytest.fixture(scope="module")
async def model_id(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/models", json=_example("createModel", "two_layer_relu"))
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize(("operation_id", "example", "location", "value", "expected"), PROBES,
                         ids=[f"{p[0]}.{'.'.join(map(str, p[2]))}={str(p[3])[:20]}" for p in PROBES])
async def test_server_and_document_agree(client: httpx.AsyncClient, model_id: str, operation_id: str, example: str,
                                         location: tuple[str | int, ...], value: Any, expected: str) -> None:
    body = _with(_example(operation_id, example), location, value)
    method, path, _ = OPERATIONS[operation_id]
    server_refuses = expected == REFUSED
    response = await client.request(method, path.replace("{model_id}", model_id), json=body)
    if server_refuses:
        assert response.status_code == 422, response.text
        assert not _schema_accepts(operation_id, body), "the server refuses this, the document accepts it"
    else:
        assert 200 <= response.status_code < 300, response.text
        assert _schema_accepts(operation_id, body), "the server accepts this, the document refuses it"
