"""Every request-body example in the OpenAPI document succeeds as it stands ("Try it out" in /docs).

The examples are sent to the app in-process, exactly as the document gives them, except for the
placeholder dataset ids of job examples (the test uploads those arrays first and substitutes
the ids the server returns) and the ``{model_id}`` of model operations (a model fitted from the
first ``createModel`` example). Jobs must also finish ``succeeded``.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.__main__ import OPENAPI_PATH
from service.app import create_app
from service.schemas.examples import EXAMPLE_DATASETS
from service.settings import Settings
from tests.conftest import serving
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.anyio
SPEC = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))


def _examples() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, example name, value) of every JSON request-body example in the document."""
    found = []
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            for name, example in content.get("application/json", {}).get("examples", {}).items():
                found.append((method.upper(), path, f"{operation['operationId']}:{name}", example["value"]))
    return found


EXAMPLES = _examples()


def test_every_json_request_body_has_an_example() -> None:
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                assert content["application/json"].get("examples"), f"{method.upper()} {path} has no example"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(Settings(data_dir=tmp_path_factory.mktemp("examples"), dask_workers=1)),
                       timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
async def dataset_ids(client: httpx.AsyncClient) -> dict[str, str]:
    """Placeholder id → the id of the same array uploaded."""
    ids = {}
    for placeholder, array in EXAMPLE_DATASETS.items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, dtype=np.float64), allow_pickle=False)
        response = await client.post("/v1/datasets", content=buffer.getvalue(),
                                     headers={"content-type": "application/x-npy"})
        assert response.status_code == 201, response.text
        ids[placeholder] = response.json()["id"]
    return ids


@pytest.fixture(scope="module")
async def model_id(client: httpx.AsyncClient) -> str:
    body = next(value for _, _, name, value in EXAMPLES if name.startswith("createModel:"))
    response = await client.post("/v1/models", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, ids) for v in value]
    return ids.get(value, value) if isinstance(value, str) else value


@pytest.mark.parametrize(("method", "path", "name", "value"), EXAMPLES, ids=[e[2] for e in EXAMPLES])
async def test_example_succeeds(client: httpx.AsyncClient, dataset_ids: dict[str, str], model_id: str,
                                method: str, path: str, name: str, value: dict[str, Any]) -> None:
    body = _substitute(value, dataset_ids)
    response = await client.request(method, path.replace("{model_id}", model_id), json=body)
    assert 200 <= response.status_code < 300, f"{name}: {response.status_code} {response.text}"
    if path == "/v1/jobs":
        job = await wait_for(client, response.json()["id"])
        assert job["status"] == "succeeded", f"{name}: {job}"


def test_job_examples_name_only_placeholder_datasets() -> None:
    """The placeholders are the only dataset ids job examples use, so the substitution above is complete."""
    for _, path, name, value in EXAMPLES:
        if path == "/v1/jobs":
            ids = [v for k, v in value.items() if k in ("x1", "x2", "x_train", "y_train", "x_test", "y_test")]
            assert ids and set(ids) <= set(EXAMPLE_DATASETS), name
