"""Convolutional networks through the API: rank-3/4 inputs for kernels, models, predictions,
trajectories, spectra and datasets; the 422s of inputs that do not fit and the 413 of the work
estimate; the checks of job requests (planned without starting Dask) and the tile rows of
convolutional Gram jobs.

Kernel values are compared with ``core.kernels.gram`` on the same arrays: this guards the HTTP
plumbing only (schemas, shapes, rendering, the learning glue); the rules themselves are tested in
``tests/core`` against Monte Carlo estimates and neural-tangents fixtures.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.linalg
from fastapi import FastAPI

from core import kernels as core_kernels
from core.kernels import spec as ks
from core.kernels.engine import pair_work
from core.tiling import TILE_WORK, choose_tile
from service.app import create_app
from service.jobs.planning import gram_tile_rows
from service.settings import Settings
from tests.api.test_datasets import npy_bytes
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(11)
IMAGES = RNG.normal(size=(7, 4, 4, 2))  # n × H × W × C
OTHER_IMAGES = RNG.normal(size=(3, 4, 4, 2))
SEQUENCES = RNG.normal(size=(5, 6, 2))  # n × L × C
OTHER_SEQUENCES = RNG.normal(size=(4, 6, 2))

CONV2D = {"type": "network", "layers": [
    {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"},
    {"type": "avg_pool", "window_shape": [2, 2]}, {"type": "flatten"}, {"type": "dense", "w_std": 1.0, "b_std": 0.1}]}
CONV2D_CORE = ks.Network((ks.Conv((3, 3), padding="SAME", w_std=1.4, b_std=0.1), ks.Activation("relu"),
                          ks.AvgPool((2, 2)), ks.Flatten(), ks.Dense(1.0, 0.1)))
CONV1D = {"type": "network", "layers": [
    {"type": "conv", "filter_shape": [3], "strides": [1], "padding": "CIRCULAR", "w_std": 1.3}, {"type": "erf"},
    {"type": "conv", "filter_shape": [2], "padding": "VALID", "w_std": 1.2, "b_std": 0.2}, {"type": "relu"},
    {"type": "global_avg_pool"}, {"type": "dense", "w_std": 1.1}]}
CONV1D_CORE = ks.Network((ks.Conv((3,), (1,), "CIRCULAR", 1.3), ks.Activation("erf"),
                          ks.Conv((2,), padding="VALID", w_std=1.2, b_std=0.2), ks.Activation("relu"),
                          ks.GlobalAvgPool(), ks.Dense(1.1)))


def rows(array: np.ndarray) -> list:
    return array.tolist()


# ------------------------------------------------------------------------------------ kernels
@pytest.mark.parametrize(("kernel", "core", "x1", "x2"), [
    (CONV2D, CONV2D_CORE, IMAGES, None), (CONV2D, CONV2D_CORE, IMAGES, OTHER_IMAGES),
    (CONV1D, CONV1D_CORE, SEQUENCES, None), (CONV1D, CONV1D_CORE, SEQUENCES, OTHER_SEQUENCES),
])
async def test_kernels_on_images_and_sequences(client: httpx.AsyncClient, kernel, core, x1, x2) -> None:
    body = {"kernel": kernel, "x1": rows(x1), "outputs": ["ntk", "nngp"]} | ({} if x2 is None else {"x2": rows(x2)})
    response = await client.post("/v1/kernels", json=body)
    assert response.status_code == 200, response.text
    got = response.json()
    expected = core_kernels.gram(core, x1, x2)
    assert got["shape"] == [len(x1), len(x1 if x2 is None else x2)]
    for name in ("ntk", "nngp"):
        np.testing.assert_allclose(got["results"][name], expected[name], rtol=1e-12, atol=1e-14)

    one = await client.post("/v1/kernels", json=body | {"outputs": ["nngp"], "dtype": "float32"},
                            headers={"accept": "application/x-npy"})
    assert one.status_code == 200 and one.headers["content-type"] == "application/x-npy"
    matrix = np.load(io.BytesIO(one.content), allow_pickle=False)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, expected["nngp"], rtol=1e-4, atol=1e-6)


NOT_GAUSSIAN = {"type": "network", "layers": [
    {"type": "conv", "filter_shape": [3, 3], "padding": "SAME"}, {"type": "relu"}, {"type": "layer_norm"},
    {"type": "flatten"}, {"type": "dense"}]}
TOO_WIDE = {"type": "network", "layers": [{"type": "conv", "filter_shape": [5, 5]}, {"type": "flatten"},
                                          {"type": "dense"}]}
NO_REDUCTION = {"type": "network", "layers": [{"type": "conv", "filter_shape": [3, 3]}, {"type": "relu"},
                                              {"type": "dense"}]}


@pytest.mark.parametrize(("body", "loc", "fragments"), [
    ({"kernel": {"type": "linear"}, "x1": rows(SEQUENCES)}, ["body", "x1"], ["rank 3", "n × d inputs only"]),
    ({"kernel": {"type": "two_layer_relu"}, "x1": rows(IMAGES)}, ["body", "x1"], ["rank 4"]),
    ({"kernel": {"type": "rbf", "lengthscale": 1.0}, "x1": rows(IMAGES[:, 0, 0])}, None, None),  # n × d stays fine
    ({"kernel": CONV2D, "x1": rows(IMAGES.reshape(7, -1))}, ["body", "kernel"], ["layers[0]", "spatial axes"]),
    ({"kernel": CONV2D, "x1": rows(SEQUENCES)}, ["body", "kernel"], ["layers[0]", "2 window entries for 1"]),
    ({"kernel": CONV2D, "x1": rows(IMAGES), "x2": rows(RNG.normal(size=(2, 4, 4, 3)))}, ["body", "x2"],
     ["[4, 4, 3]", "[4, 4, 2]"]),
    ({"kernel": CONV2D, "x1": rows(IMAGES), "x2": rows(SEQUENCES)}, ["body", "x2"], ["rank 3", "rank 4"]),
    ({"kernel": NOT_GAUSSIAN, "x1": rows(IMAGES)}, ["body", "kernel"], ["layers[2]", "layer_norm", "Gaussian"]),
    ({"kernel": TOO_WIDE, "x1": rows(IMAGES)}, ["body", "kernel"], ["layers[0]", "VALID"]),
    ({"kernel": NO_REDUCTION, "x1": rows(IMAGES)}, ["body", "kernel"], ["spatial axes", "flatten"]),
])
async def test_inputs_that_do_not_fit_are_422(client: httpx.AsyncClient, body, loc, fragments) -> None:
    response = await client.post("/v1/kernels", json=body)
    if loc is None:
        assert response.status_code == 200, response.text
        return
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["loc"] == loc, problem
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]


# ------------------------------------------------------------------------------- learning
async def test_model_predictions_trajectory_and_spectrum_on_images(client: httpx.AsyncClient) -> None:
    x, x_test = IMAGES, OTHER_IMAGES
    y = np.stack([np.sin(x[:, 0, 0, 0]), x[:, 1, 2].sum(axis=1)], axis=1)  # two outputs
    ridge, t = 0.01, 3.0
    k = core_kernels.gram(CONV2D_CORE, x)
    k_cross = core_kernels.gram(CONV2D_CORE, x_test, x)
    k_test = core_kernels.gram(CONV2D_CORE, x_test)

    created = await client.post("/v1/models", json={"kernel": CONV2D, "x_train": rows(x), "y_train": rows(y),
                                                     "ridge": ridge})
    assert created.status_code == 201, created.text
    model = created.json()
    assert model["n_train"] == 7 and model["n_outputs"] == 2 and model["which"] == "ntk"
    predict = f"/v1/models/{model['id']}/predictions"

    k_r = k["ntk"] + ridge * np.eye(7)
    at_infinity = (await client.post(predict, json={"x_test": rows(x_test)})).json()
    np.testing.assert_allclose(at_infinity["mean"], k_cross["ntk"] @ np.linalg.solve(k_r, y), rtol=1e-9)
    assert at_infinity["variance"] is None

    # gradient flow for time t on L = (1/2N)Σ‖f − y‖², N = n·k: α(t) = K_r⁻¹ (I − e^{−K_r t/N}) y
    alpha_t = np.linalg.solve(k_r, (np.eye(7) - scipy.linalg.expm(-k_r * t / y.size)) @ y)
    finite = (await client.post(predict, json={"x_test": rows(x_test), "time": t, "variance": True})).json()
    np.testing.assert_allclose(finite["mean"], k_cross["ntk"] @ alpha_t, rtol=1e-8, atol=1e-12)
    variance = np.array(finite["variance"])
    assert variance.shape == (3,) and np.all(variance >= 0) and np.all(np.isfinite(variance))

    gp = (await client.post("/v1/models", json={"kernel": CONV2D, "which": "nngp", "x_train": rows(x),
                                                "y_train": rows(y), "ridge": ridge})).json()
    posterior = (await client.post(f"/v1/models/{gp['id']}/predictions",
                                   json={"x_test": rows(x_test), "variance": True})).json()
    k_nngp = k["nngp"] + ridge * np.eye(7)
    np.testing.assert_allclose(posterior["mean"], k_cross["nngp"] @ np.linalg.solve(k_nngp, y), rtol=1e-9)
    expected_var = np.diag(k_test["nngp"]) - np.einsum(
        "ij,ji->i", k_cross["nngp"], np.linalg.solve(k_nngp, k_cross["nngp"].T))
    np.testing.assert_allclose(posterior["variance"], expected_var, rtol=1e-7, atol=1e-12)

    mismatched = await client.post(predict, json={"x_test": rows(SEQUENCES)})
    assert assert_problem(mismatched, 422)["errors"][0]["loc"] == ["body", "x_test"]

    trajectory = await client.post("/v1/trajectories", json={
        "kernel": CONV2D, "x_train": rows(x), "y_train": rows(y), "ridge": ridge, "x_test": rows(x_test),
        "times": [0.0, t]})
    assert trajectory.status_code == 200, trajectory.text
    trajectory = trajectory.json()
    np.testing.assert_allclose(trajectory["test_predictions"][1], finite["mean"], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(trajectory["train_predictions"][1], k["ntk"] @ alpha_t, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(trajectory["eigenvalues"], np.linalg.eigvalsh(k["ntk"])[::-1], rtol=1e-9,
                               atol=1e-12)

    spectrum = await client.post("/v1/spectra", json={"kernel": CONV2D, "which": "nngp", "x": rows(x)})
    assert spectrum.status_code == 200, spectrum.text
    np.testing.assert_allclose(spectrum.json()["eigenvalues"], np.linalg.eigvalsh(k["nngp"])[::-1], rtol=1e-9,
                               atol=1e-12)


# ---------------------------------------------------------------------------- work limit
@pytest.fixture
async def limited(tmp_path: Path):
    """An app whose work limit admits 20 example pairs of CONV2D on IMAGES' rows."""
    limit = 20 * pair_work(CONV2D_CORE, IMAGES.shape[1:])
    app: FastAPI = create_app(Settings(data_dir=tmp_path / "data", max_kernel_work=limit))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def assert_work_413(response: httpx.Response, advice: str = "POST /v1/jobs") -> None:
    problem = assert_problem(response, 413)
    assert problem["errors"][0]["loc"] == ["limits", "max_kernel_work"]
    assert "NTK_MAX_KERNEL_WORK" in problem["detail"] and advice in problem["detail"], problem["detail"]


async def test_work_estimate_over_the_limit_is_413(limited: httpx.AsyncClient) -> None:
    four, five = rows(IMAGES[:4]), rows(IMAGES[:5])
    assert (await limited.post("/v1/kernels", json={"kernel": CONV2D, "x1": four})).status_code == 200
    assert_work_413(await limited.post("/v1/kernels", json={"kernel": CONV2D, "x1": five}))
    assert_work_413(await limited.post("/v1/kernels", json={"kernel": CONV2D, "x1": four, "x2": rows(IMAGES[:6])}))
    assert_work_413(await limited.post("/v1/spectra", json={"kernel": CONV2D, "x": five}))
    y4 = [0.0, 1.0, 2.0, 3.0]
    assert_work_413(await limited.post("/v1/models", json={"kernel": CONV2D, "x_train": five,
                                                           "y_train": y4 + [4.0]}))
    assert_work_413(await limited.post("/v1/trajectories", json={"kernel": CONV2D, "x_train": four, "y_train": y4,
                                                                 "x_test": rows(IMAGES[:6]), "times": [1.0]}))
    model = await limited.post("/v1/models", json={"kernel": CONV2D, "x_train": four, "y_train": y4, "ridge": 0.1})
    assert model.status_code == 201, model.text
    predict = f"/v1/models/{model.json()['id']}/predictions"
    assert (await limited.post(predict, json={"x_test": four})).status_code == 200
    assert_work_413(await limited.post(predict, json={"x_test": rows(IMAGES[:6])}), "smaller batches")
    assert_work_413(await limited.post(f"/v1/models/{model.json()['id']}/trajectory",
                                       json={"times": [1.0], "x_test": rows(IMAGES[:6])}))
    # the classic kernels and fully connected networks are bounded by the other limits only
    flat = rows(IMAGES.reshape(7, -1))
    rbf = {"type": "rbf", "lengthscale": 1.0}
    assert (await limited.post("/v1/kernels", json={"kernel": rbf, "x1": flat})).status_code == 200


# ------------------------------------------------------------------------- datasets, jobs
async def upload(client: httpx.AsyncClient, array: np.ndarray) -> str:
    response = await client.post("/v1/datasets", content=npy_bytes(array), headers={"content-type": "application/x-npy"})
    assert response.status_code == 201, response.text
    assert response.json()["shape"] == list(array.shape)
    return response.json()["id"]


async def test_rank_3_and_4_datasets_and_job_checks(client: httpx.AsyncClient, app: FastAPI) -> None:
    """Job requests are checked as the synchronous ones before anything runs (no Dask starts)."""
    images = await upload(client, IMAGES.astype(np.float32))
    sequences = await upload(client, SEQUENCES)
    flat = await upload(client, IMAGES.reshape(7, -1))
    wide = await upload(client, RNG.normal(size=(3, 4, 4, 3)))
    y = await upload(client, RNG.normal(size=7))
    cases = [
        ({"type": "gram", "kernel": {"type": "linear"}, "x1": images}, ["body", "x1"], "rank 4"),
        ({"type": "gram", "kernel": CONV2D, "x1": flat}, ["body", "kernel"], "layers[0]"),
        ({"type": "gram", "kernel": CONV2D, "x1": sequences}, ["body", "kernel"], "layers[0]"),
        ({"type": "gram", "kernel": CONV2D, "x1": images, "x2": wide}, ["body", "x2"], "[4, 4, 3]"),
        ({"type": "gram", "kernel": CONV2D, "x1": images, "x2": sequences}, ["body", "x2"], "rank 3"),
        ({"type": "gram", "kernel": NOT_GAUSSIAN, "x1": images}, ["body", "kernel"], "layers[2]"),
        ({"type": "gram", "kernel": CONV2D, "x1": images, "device": "gpu"}, ["body", "device"], "CPU workers"),
        ({"type": "fit", "kernel": {"type": "rbf", "lengthscale": 1.0}, "x_train": images, "y_train": y},
         ["body", "x_train"], "rank 4"),
        ({"type": "fit", "kernel": CONV2D, "x_train": images, "y_train": y, "device": "gpu"}, ["body", "device"],
         "CPU workers"),
        ({"type": "fit", "kernel": CONV1D, "x_train": images, "y_train": y}, ["body", "kernel"], "layers[0]"),
        ({"type": "trajectory", "kernel": CONV2D, "x_train": images, "y_train": y, "x_test": wide, "times": [1.0]},
         ["body", "x_test"], "[4, 4, 3]"),
    ]
    for body, loc, fragment in cases:
        problem = assert_problem(await client.post("/v1/jobs", json=body), 422)
        assert problem["errors"][0]["loc"] == loc and fragment in problem["detail"], (body, problem)
    assert (await client.get("/v1/jobs")).json()["items"] == []
    assert not app.state.engine.started


MYRTLE = ks.Network((ks.Conv((3, 3), padding="SAME", w_std=1.41), ks.Activation("relu"),
                     ks.Conv((3, 3), padding="SAME", w_std=1.41), ks.Activation("relu"), ks.AvgPool((2, 2)),
                     ks.Conv((3, 3), padding="SAME", w_std=1.41), ks.Activation("relu"), ks.AvgPool((2, 2)),
                     ks.GlobalAvgPool(), ks.Dense(1.0)))


@pytest.mark.parametrize(("spec", "row_shape"), [(MYRTLE, (32, 32, 3)), (MYRTLE, (16, 16, 3)), (CONV1D_CORE, (6, 2)),
                                                 (CONV2D_CORE, (4, 4, 2))])
def test_convolutional_gram_tiles_are_a_few_seconds_of_work(spec: ks.Network, row_shape: tuple[int, ...]) -> None:
    work = pair_work(spec, row_shape)
    tile = gram_tile_rows(spec, 50_000, row_shape, 2, 8, 256 * 1024**2)
    memory_tile = choose_tile(50_000, int(np.prod(row_shape)), 2, 8, 256 * 1024**2, row_blocks=2)
    assert tile == min(memory_tile, int(np.sqrt(TILE_WORK / work)))
    assert tile * tile * work <= TILE_WORK and tile >= 1
    assert tile == memory_tile or (tile + 1) ** 2 * work > TILE_WORK


def test_fully_connected_gram_tiles_keep_the_memory_plan() -> None:
    relu = ks.Network((ks.Dense(1.4, 0.1), ks.Activation("relu"), ks.Dense(1.0)))
    assert gram_tile_rows(relu, 20_000, (784,), 1, 4, 256 * 1024**2) == choose_tile(
        20_000, 784, 1, 4, 256 * 1024**2, row_blocks=2)
    assert gram_tile_rows(ks.RBF(1.0), 100, (5,), 1, 8, 256 * 1024**2) == 64


# ---------------------------------------------------------------------- finite-width networks
async def test_empirical_kernels_of_a_conv_net_on_images(client: httpx.AsyncClient) -> None:
    from core.empirical import empirical_kernels

    body = {"kernel": CONV2D, "width": 16, "seed": 3, "x1": rows(IMAGES), "x2": rows(OTHER_IMAGES)}
    response = await client.post("/v1/empirical-kernels", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["shape"] == [7, 3]
    expected = empirical_kernels(CONV2D_CORE, IMAGES, OTHER_IMAGES, width=16, seed=3)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(out["results"][name], expected[name], rtol=1e-12)
        assert 0 < out["relative_error_to_infinite"][name] < 2
    refused = {"type": "network", "layers": [{"type": "relu"}, {"type": "flatten"}, {"type": "dense"}]}
    problem = assert_problem(await client.post("/v1/empirical-kernels", json=body | {"kernel": refused}), 422)
    assert "layers[0]" in problem["detail"]


async def test_lazy_training_of_a_conv_net(client: httpx.AsyncClient) -> None:
    y = np.tanh(IMAGES[:, 0, 0, 0])
    body = {"kernel": CONV1D, "width": 32, "seed": 0, "x_train": rows(SEQUENCES), "y_train": y[:5].tolist(),
            "steps": [0, 5, 20], "x_test": rows(OTHER_SEQUENCES), "learning_rate": 0.5}
    response = await client.post("/v1/experiments/lazy-training", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["steps"] == [0, 5, 20]
    assert len(out["network"]["test_predictions"]) == 3 and len(out["network"]["test_predictions"][0]) == 4
    losses = out["network"]["train_loss"]
    assert losses[-1] < losses[0]  # gradient descent on the real conv net trains
    assert out["network"]["relative_parameter_change"][0] == 0.0 < out["network"]["relative_parameter_change"][-1]
