"""POST /v1/kernels and /v1/empirical-kernels end to end (in-process)."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest

from core import kernels as core_kernels
from core.kernels import spec as ks
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(7)
X1 = RNG.normal(size=(6, 3))
X2 = RNG.normal(size=(4, 3))
RELU3 = [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense", "b_std": 0.1}]
RELU3_CORE = ks.Network((ks.Dense(1.4, 0.1), ks.Activation("relu")) * 3 + (ks.Dense(1.0, 0.1),))


async def kernels(client: httpx.AsyncClient, kernel: dict, x1: np.ndarray, x2: np.ndarray | None = None,
                  **extra) -> dict:
    body = {"kernel": kernel, "x1": x1.tolist(), **extra}
    if x2 is not None:
        body["x2"] = x2.tolist()
    response = await client.post("/v1/kernels", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ({"type": "linear"}, lambda a, b: a @ b.T),
        ({"type": "polynomial", "degree": 3, "c": 0.5}, lambda a, b: (0.5 + a @ b.T) ** 3),
        ({"type": "rbf", "lengthscale": 1.5},
         lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * 1.5**2))),
        ({"type": "laplace", "lengthscale": 2.0},
         lambda a, b: np.exp(-np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)) / 2.0)),
    ],
)
async def test_classic_kernels_match_their_formulas(client: httpx.AsyncClient, kernel: dict, expected) -> None:
    body = await kernels(client, kernel, X1, X2)
    assert body["shape"] == [6, 4] and body["dtype"] == "float64"
    np.testing.assert_allclose(body["results"]["kernel"], expected(X1, X2), rtol=1e-12, atol=1e-12)


async def test_network_kernel_matches_core_and_defaults_to_all_outputs(client: httpx.AsyncClient) -> None:
    body = await kernels(client, {"type": "network", "layers": RELU3}, X1)
    expected = core_kernels.gram(RELU3_CORE, X1)
    assert set(body["results"]) == {"nngp", "ntk"}
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(body["results"][name], expected[name], rtol=1e-12)
    explicit = await kernels(client, {"type": "network", "layers": RELU3}, X1, X1)
    np.testing.assert_allclose(explicit["results"]["ntk"], body["results"]["ntk"], rtol=1e-12)


async def test_two_layer_relu_parts_add_up(client: httpx.AsyncClient) -> None:
    r = (await kernels(client, {"type": "two_layer_relu"}, X1, X2))["results"]
    assert set(r) == {"ntk", "ntk_a", "ntk_b", "nngp"}
    np.testing.assert_allclose(np.add(r["ntk_a"], r["ntk_b"]), r["ntk"], rtol=1e-12)
    np.testing.assert_allclose(r["ntk_b"], r["nngp"], rtol=1e-12)


async def test_float32_and_npy(client: httpx.AsyncClient) -> None:
    kernel = {"type": "network", "layers": RELU3}
    body32 = await kernels(client, kernel, X1, dtype="float32", outputs=["ntk"])
    body64 = await kernels(client, kernel, X1, outputs=["ntk"])
    assert body32["dtype"] == "float32"
    np.testing.assert_allclose(body32["results"]["ntk"], body64["results"]["ntk"], rtol=1e-5)
    response = await client.post(
        "/v1/kernels", json={"kernel": kernel, "x1": X1.tolist(), "outputs": ["ntk"], "dtype": "float32"},
        headers={"accept": "application/x-npy"},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npy"
    matrix = np.load(io.BytesIO(response.content), allow_pickle=False)
    assert matrix.dtype == np.dtype("<f4") and matrix.shape == (6, 6)
    np.testing.assert_allclose(matrix, body32["results"]["ntk"], rtol=1e-6)


async def test_hostile_numerics_stay_finite(client: httpx.AsyncClient) -> None:
    x = np.array([[0.0, 0.0], [1e150, -1e150], [1e-150, 1e-150], [1.0, 2.0], [1.0, 2.0]])
    for kernel in ({"type": "network", "layers": RELU3}, {"type": "two_layer_relu"}, {"type": "laplace",
                                                                                     "lengthscale": 1.0}):
        body = await kernels(client, kernel, x)
        for matrix in body["results"].values():
            assert np.isfinite(np.array(matrix, dtype=float)).all()


async def test_overflow_is_a_problem_not_null(client: httpx.AsyncClient) -> None:
    layers = [{"type": "dense", "w_std": 1e30}, {"type": "relu"}] * 20 + [{"type": "dense"}]
    response = await client.post("/v1/kernels", json={"kernel": {"type": "network", "layers": layers},
                                                      "x1": [[1.0, 2.0]], "dtype": "float32"})
    assert "overflows float32" in assert_problem(response, 422)["detail"]


async def test_health_answers_during_a_big_computation(client: httpx.AsyncClient) -> None:
    x = np.random.default_rng(0).normal(size=(3000, 16)).round(3).tolist()
    body = {"kernel": {"type": "network", "layers": RELU3}, "x1": x, "outputs": ["ntk"]}
    big = asyncio.create_task(client.post("/v1/kernels", json=body, headers={"accept": "application/x-npy"}))
    await asyncio.sleep(0.05)
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert not big.done(), "the computation finished before the health check: make it bigger"
    assert (await big).status_code == 200


async def empirical(client: httpx.AsyncClient, **body) -> httpx.Response:
    return await client.post("/v1/empirical-kernels", json=body)


async def test_empirical_kernel_approaches_the_limit(client: httpx.AsyncClient) -> None:
    kernel = {"type": "network", "layers": [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"},
                                            {"type": "dense", "b_std": 0.1}]}
    errors = []
    for width in (32, 8192):
        response = await empirical(client, kernel=kernel, width=width, seed=3, x1=X1.tolist())
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body["results"]) == {"nngp", "ntk"} == set(body["relative_error_to_infinite"])
        errors.append(body["relative_error_to_infinite"]["ntk"])
    assert errors[1] < errors[0] / 4  # ≈ 1/√m: a factor 16 expected


async def test_empirical_two_layer_relu_is_exact_and_seeded(client: httpx.AsyncClient) -> None:
    first = (await empirical(client, kernel={"type": "two_layer_relu"}, width=64, seed=1, x1=X1.tolist(),
                             x2=X2.tolist())).json()
    again = (await empirical(client, kernel={"type": "two_layer_relu"}, width=64, seed=1, x1=X1.tolist(),
                             x2=X2.tolist())).json()
    assert first == again
    assert set(first["results"]) == {"ntk", "ntk_a", "ntk_b", "nngp"}
    r = first["results"]
    np.testing.assert_allclose(np.add(r["ntk_a"], r["ntk_b"]), r["ntk"], rtol=1e-10)


async def test_empirical_limits_and_readout(client: httpx.AsyncClient) -> None:
    no_readout = {"type": "network", "layers": [{"type": "dense"}, {"type": "relu"}]}
    response = await empirical(client, kernel=no_readout, width=8, x1=[[1.0]])
    assert "dense readout" in assert_problem(response, 422)["detail"]
    response = await empirical(client, kernel={"type": "two_layer_relu"}, width=2**30, x1=[[1.0]])
    assert "NTK_MAX_EMPIRICAL_WIDTH" in assert_problem(response, 413)["detail"]
    deep = {"type": "network", "layers": [{"type": "dense"}, {"type": "relu"}] * 3 + [{"type": "dense"}]}
    response = await empirical(client, kernel=deep, width=2**17, x1=[[1.0]])
    assert "NTK_MAX_EMPIRICAL_WORK" in assert_problem(response, 413)["detail"]
    response = await empirical(client, kernel={"type": "linear"}, width=8, x1=[[1.0]])
    assert_problem(response, 422)
