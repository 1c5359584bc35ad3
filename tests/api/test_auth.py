"""API keys: 401 without a valid key; resources visible only to the key that created them."""

from __future__ import annotations

import logging

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.api.test_datasets import npy_bytes
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio


@pytest.fixture
async def keyed(settings):
    app = create_app(settings.model_copy(update={"api_keys": ("alpha-key", "beta-key")}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_keys_are_parsed_from_the_environment(monkeypatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("NTK_API_KEYS", " one, two ,,")
    assert Settings().api_keys == ("one", "two")


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic YWxwaGEta2V5"},
                                     {"Authorization": "Bearer"}])
async def test_missing_or_wrong_key_is_401(keyed: httpx.AsyncClient, headers) -> None:
    response = await keyed.post("/v1/kernels", json={"kernel": {"type": "linear"}, "x1": [[1]]}, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(await keyed.get("/v1/datasets", headers=headers), 401)


async def test_operations_endpoints_need_no_key(keyed: httpx.AsyncClient) -> None:
    assert (await keyed.get("/healthz")).status_code == 200
    assert (await keyed.get("/metrics")).status_code == 200


async def test_resources_belong_to_their_key(keyed: httpx.AsyncClient, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    created = await keyed.post("/v1/datasets", content=npy_bytes(np.ones(3)),
                               headers={"content-type": "application/x-npy", **bearer("alpha-key")})
    assert created.status_code == 201
    dataset_id = created.json()["id"]
    assert (await keyed.get(f"/v1/datasets/{dataset_id}", headers=bearer("alpha-key"))).status_code == 200
    assert_problem(await keyed.get(f"/v1/datasets/{dataset_id}", headers=bearer("beta-key")), 404)
    assert_problem(await keyed.delete(f"/v1/datasets/{dataset_id}", headers=bearer("beta-key")), 404)
    assert (await keyed.get("/v1/datasets", headers=bearer("beta-key"))).json()["items"] == []
    assert all("alpha-key" not in r.getMessage() and "alpha-key" not in str(r.__dict__) for r in caplog.records)
