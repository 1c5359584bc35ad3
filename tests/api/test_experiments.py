"""POST /v1/experiments/lazy-training: the network approaches its NTK prediction as width grows."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(4)
X = RNG.normal(size=(8, 3))
Y = np.tanh(X[:, 0])
XT = RNG.normal(size=(3, 3))
NET = {"type": "network", "layers": [{"type": "dense", "w_std": 1.4}, {"type": "relu"}, {"type": "dense"}]}


async def run(client: httpx.AsyncClient, width: int, seed: int = 0, **extra) -> dict:
    body = {"kernel": NET, "width": width, "seed": seed, "x_train": X.tolist(), "y_train": Y.tolist(),
            "steps": [0, 10, 50], "x_test": XT.tolist()} | extra
    response = await client.post("/v1/experiments/lazy-training", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_side_by_side_shapes_and_conventions(client: httpx.AsyncClient) -> None:
    out = await run(client, 256)
    assert out["steps"] == [0, 10, 50] and out["width"] == 256
    assert out["ntk"]["initial_function"] == "zero" and out["ntk_from_network_init"]["initial_function"] == "network"
    assert len(out["network"]["test_predictions"]) == 3 and len(out["network"]["test_predictions"][0]) == 3
    assert out["network"]["relative_parameter_change"][0] == 0.0 == out["network"]["relative_kernel_change"][0]
    np.testing.assert_allclose(out["ntk"]["test_predictions"][0], 0.0)  # f_0 = 0
    assert out["network"]["train_loss"][0] == pytest.approx(out["ntk_from_network_init"]["train_loss"][0])
    trajectory = (await client.post("/v1/trajectories", json={
        "kernel": NET, "x_train": X.tolist(), "y_train": Y.tolist(), "times": [0, 10, 50], "method": "gd",
        "x_test": XT.tolist()})).json()
    np.testing.assert_allclose(out["ntk"]["train_loss"], trajectory["train_loss"], rtol=1e-10)


async def test_wider_networks_move_less_and_track_the_ntk(client: httpx.AsyncClient) -> None:
    def mean_over_seeds(outs: list[dict], key) -> float:
        return float(np.mean([key(o) for o in outs]))

    summary = []
    for width in (64, 4096):
        outs = [await run(client, width, seed) for seed in range(3)]
        summary.append((mean_over_seeds(outs, lambda o: o["network"]["relative_parameter_change"][-1]),
                        mean_over_seeds(outs, lambda o: o["network"]["relative_kernel_change"][-1]),
                        mean_over_seeds(outs, lambda o: max(o["gap_train"]))))
    narrow, wide = summary
    for before, after in zip(narrow, wide, strict=True):
        assert after < before / 3  # ≈ 1/√width predicts a factor 8


async def test_lazy_training_refusals(client: httpx.AsyncClient, settings) -> None:
    body = {"kernel": NET, "width": 16, "x_train": X.tolist(), "y_train": Y.tolist(), "steps": [5, 1]}
    assert "strictly increasing" in assert_problem(await client.post("/v1/experiments/lazy-training", json=body),
                                                   422)["detail"]
    body |= {"steps": [0, 5], "y_train": Y[:3].tolist()}
    assert "y_train has 3 rows" in assert_problem(await client.post("/v1/experiments/lazy-training", json=body),
                                                  422)["detail"]
    diverge = {"kernel": NET, "width": 64, "x_train": X.tolist(), "y_train": Y.tolist(), "steps": [0, 200],
               "learning_rate": 1e4}
    assert "learning_rate" in assert_problem(await client.post("/v1/experiments/lazy-training", json=diverge),
                                             422)["detail"]
    app = create_app(settings.model_copy(update={"max_lazy_training_work": 1000}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/experiments/lazy-training",
                                json={"kernel": NET, "width": 64, "x_train": X.tolist(), "y_train": Y.tolist(),
                                      "steps": [0, 100]})
    assert "NTK_MAX_LAZY_TRAINING_WORK" in assert_problem(response, 413)["detail"]
