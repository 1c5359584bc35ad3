"""A method a path does not serve is a 405 whose ``Allow`` lists every method the path serves
(RFC 9110), for every path of the OpenAPI document — not only the methods of one of its routes."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from fastapi import FastAPI

from service.__main__ import OPENAPI_PATH
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio
SPEC = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Served but not in the document: HEAD is implicit in RFC 9110 and OpenAPI tools (schemathesis
#: treats it so); the job result serves it for download clients.
IMPLICIT = {"HEAD"}


def _cases() -> list[tuple[str, str, frozenset[str]]]:
    cases = []
    for path, operations in SPEC["paths"].items():
        declared = frozenset(method.upper() for method in operations)
        concrete = re.sub(r"\{[^}]+\}", "some_id", path)
        cases += [(concrete, method, declared) for method in METHODS if method not in declared]
    return cases


CASES = _cases()


def test_the_resources_with_several_methods_are_covered() -> None:
    by_path = {path: declared for path, _, declared in CASES}
    assert by_path["/v1/datasets"] == {"GET", "POST"}
    assert by_path["/v1/jobs/some_id"] == {"GET", "DELETE"}
    assert by_path["/v1/models/some_id"] == {"GET", "DELETE"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("allow")))


@pytest.mark.parametrize(("path", "method", "declared"), CASES, ids=[f"{m} {p}" for p, m, _ in CASES])
async def test_unsupported_method_is_405_with_every_allowed_method(app: FastAPI, path: str, method: str,
                                                                  declared: frozenset[str]) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.request(method, path)
    assert response.status_code == 405, response.text
    allowed = [m.strip() for m in response.headers["allow"].split(",")]
    assert set(allowed) - IMPLICIT == declared, f"{method} {path}: Allow: {response.headers['allow']}"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"].endswith(f"allowed: {response.headers['allow']}.")
