"""Dataset ids in synchronous requests: every array field takes an uploaded dataset's id.

Each answer is compared with the same request carrying the arrays inline (JSON): the two paths
must agree exactly, which guards the loading of datasets (rank, dtype, ownership), not the maths.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.app import create_app
from tests.api.test_datasets import npy_bytes, upload
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(5)
X = RNG.normal(size=(9, 4))
Y = np.tanh(X[:, :2])
XT = RNG.normal(size=(3, 4))
IMAGES = RNG.normal(size=(5, 4, 4, 2)).astype(np.float32)
NET = {"type": "network", "layers": [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"},
                                     {"type": "dense"}]}
CNN = {"type": "network", "layers": [{"type": "conv", "filter_shape": [2, 2], "w_std": 1.3}, {"type": "relu"},
                                     {"type": "global_avg_pool"}, {"type": "dense"}]}


async def dataset(client: httpx.AsyncClient, array: np.ndarray) -> str:
    response = await upload(client, npy_bytes(array))
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def both(client: httpx.AsyncClient, path: str, inline: dict, by_id: dict) -> tuple[dict, dict]:
    first, second = await client.post(path, json=inline), await client.post(path, json=by_id)
    assert first.status_code == second.status_code, (first.text, second.text)
    assert first.status_code in (200, 201), first.text
    return first.json(), second.json()


async def test_every_synchronous_array_field_takes_a_dataset_id(client: httpx.AsyncClient) -> None:
    x, y, xt = await dataset(client, X), await dataset(client, Y), await dataset(client, XT)
    inline, by_id = await both(client, "/v1/kernels", {"kernel": NET, "x1": X.tolist(), "x2": XT.tolist()},
                               {"kernel": NET, "x1": x, "x2": xt})
    assert inline == by_id
    images = await dataset(client, IMAGES)
    inline, by_id = await both(client, "/v1/kernels", {"kernel": CNN, "x1": IMAGES.astype(float).tolist()},
                               {"kernel": CNN, "x1": images})
    assert inline == by_id
    inline, by_id = await both(client, "/v1/empirical-kernels",
                               {"kernel": NET, "width": 32, "x1": X.tolist()}, {"kernel": NET, "width": 32, "x1": x})
    assert inline == by_id
    problem = {"kernel": NET, "x_train": X.tolist(), "y_train": Y.tolist()}
    problem_ids = {"kernel": NET, "x_train": x, "y_train": y}
    extra = {"times": [0.0, 1.0, 10.0], "x_test": XT.tolist(), "y_test": np.tanh(XT[:, :2]).tolist()}
    y_test = await dataset(client, np.tanh(XT[:, :2]))
    inline, by_id = await both(client, "/v1/trajectories", problem | extra,
                               problem_ids | extra | {"x_test": xt, "y_test": y_test})
    assert inline == by_id
    inline, by_id = await both(client, "/v1/spectra", {"kernel": NET, "x": X.tolist()}, {"kernel": NET, "x": x})
    assert inline == by_id
    first, second = await both(client, "/v1/models", problem, problem_ids)
    for key in ("n_train", "n_outputs", "train_residual_norm", "condition_number"):
        assert first[key] == second[key]
    for model_id in (first["id"], second["id"]):
        inline, by_id = await both(client, f"/v1/models/{model_id}/predictions",
                                   {"x_test": XT.tolist(), "variance": True}, {"x_test": xt, "variance": True})
        assert inline == by_id
    y1 = await dataset(client, Y[:, 0])
    lazy = {"kernel": NET, "width": 16, "steps": [0, 5], "x_train": X.tolist(), "y_train": Y[:, 0].tolist()}
    inline, by_id = await both(client, "/v1/experiments/lazy-training", lazy, lazy | {"x_train": x, "y_train": y1})
    assert inline == by_id


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("x1", "ds_doesnotexist", "no dataset 'ds_doesnotexist'"),
    ("x1", "not-a-dataset", "must be a dataset id"),
])
async def test_unknown_or_malformed_ids_are_422_at_the_field(client: httpx.AsyncClient, field: str, value: str,
                                                            fragment: str) -> None:
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": NET, field: value}), 422)
    assert body["errors"][0]["loc"][:2] == ["body", field]
    assert fragment in body["detail"]


async def test_ranks_are_checked_for_each_field(client: httpx.AsyncClient) -> None:
    cube = await dataset(client, RNG.normal(size=(9, 2, 2)))
    body = assert_problem(await client.post("/v1/models", json={"kernel": NET, "x_train": X.tolist(),
                                                                "y_train": cube}), 422)
    assert body["errors"][0]["loc"] == ["body", "y_train"] and "rank 1 or 2" in body["detail"]
    vector = await dataset(client, X[:, 0])
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": NET, "x1": vector}), 422)
    assert body["errors"][0]["loc"] == ["body", "x1"]


async def test_another_keys_dataset_is_not_found(app: FastAPI, settings) -> None:
    keyed = create_app(settings.model_copy(update={"api_keys": ("alpha-key", "beta-key")}))
    async with keyed.router.lifespan_context(keyed):
        transport = httpx.ASGITransport(app=keyed)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as alpha, \
                httpx.AsyncClient(transport=transport, base_url="http://t") as beta:
            alpha.headers["Authorization"] = "Bearer alpha-key"
            beta.headers["Authorization"] = "Bearer beta-key"
            x = await dataset(alpha, X)
            assert (await alpha.post("/v1/kernels", json={"kernel": NET, "x1": x})).status_code == 200
            body = assert_problem(await beta.post("/v1/kernels", json={"kernel": NET, "x1": x}), 422)
            assert "no dataset" in body["detail"]
