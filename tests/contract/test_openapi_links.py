"""The document's links are complete and lead somewhere: every operation on an item
(``/v1/datasets/{dataset_id}``, ``/v1/models/{model_id}…``, ``/v1/jobs/{job_id}…``) is the target of a
link from the operation that creates the item, and following each link of a real create (and
list) response reaches the item (never 404)."""

from __future__ import annotations

import io
import json
import re
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

pytestmark = pytest.mark.anyio
SPEC = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
OPERATIONS = {op["operationId"]: (method.upper(), path, op)
              for path, methods in SPEC["paths"].items() for method, op in methods.items()}
CREATES = {"createDataset": "201", "createModel": "201", "createJob": "202"}
LISTS = {"listDatasets": "createDataset", "listModels": "createModel", "listJobs": "createJob"}


def _links(operation_id: str, status: str) -> dict[str, Any]:
    return OPERATIONS[operation_id][2]["responses"][status].get("links", {})


def test_every_item_operation_is_linked_from_its_create() -> None:
    linked = {(link["operationId"], parameter) for operation_id, status in CREATES.items()
              for link in _links(operation_id, status).values() for parameter in link["parameters"]}
    for operation_id, (_, path, _) in OPERATIONS.items():
        for parameter in re.findall(r"\{(\w+)\}", path):
            assert (operation_id, parameter) in linked, f"no link supplies {parameter} to {operation_id}"


def _resolve(expression: str, body: Any) -> Any:
    """``$response.body#/json/pointer`` against a response body."""
    prefix = "$response.body#"
    assert expression.startswith(prefix), expression
    for part in expression[len(prefix):].split("/")[1:]:
        body = body[int(part)] if isinstance(body, list) else body[part]
    return body


def _example(operation_id: str) -> dict[str, Any] | None:
    content = OPERATIONS[operation_id][2].get("requestBody", {}).get("content", {}).get("application/json")
    return None if content is None else next(iter(content["examples"].values()))["value"]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(create_app(Settings(data_dir=tmp_path_factory.mktemp("links"), dask_workers=1)),
                       timeout=60) as c:
        yield c


async def _create(client: httpx.AsyncClient, operation_id: str) -> httpx.Response:
    if operation_id == "createDataset":
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(EXAMPLE_DATASETS["ds_example_x_train"]), allow_pickle=False)
        return await client.post("/v1/datasets", content=buffer.getvalue(),
                                 headers={"content-type": "application/x-npy"})
    body = _example(operation_id)
    if operation_id == "createJob":
        x = (await _create(client, "createDataset")).json()["id"]
        body = {"type": "gram", "kernel": {"type": "rbf", "lengthscale": 1.0}, "x1": x}
    method, path, _ = OPERATIONS[operation_id]
    return await client.request(method, path, json=body)


@pytest.mark.parametrize("source", [*CREATES, *LISTS])
async def test_following_each_link_reaches_the_item(client: httpx.AsyncClient, source: str) -> None:
    create = LISTS.get(source, source)
    created = await _create(client, create)
    assert created.status_code == int(CREATES[create]), created.text
    if source in LISTS:
        method, path, _ = OPERATIONS[source]
        response = await client.request(method, path)
        status = "200"
    else:
        response, status = created, CREATES[source]
    links = _links(source, status)
    assert links, f"{source} {status} has no links"
    # deletes last, so that every other link still finds the item
    for name, link in sorted(links.items(), key=lambda item: item[1]["operationId"].startswith("delete")):
        method, path, _ = OPERATIONS[link["operationId"]]
        for parameter, expression in link["parameters"].items():
            path = path.replace(f"{{{parameter}}}", _resolve(expression, response.json()))
        assert "{" not in path, f"{name}: {path}"
        if source in LISTS:  # the newest item is the one just created
            assert created.json()["id"] in path, f"{name}: {path}"
        body = _example(link["operationId"])
        answer = await client.request(method, path, json=body) if body is not None else \
            await client.request(method, path)
        assert answer.status_code != 404 and answer.status_code < 500, f"{source} → {name}: {answer.text}"
