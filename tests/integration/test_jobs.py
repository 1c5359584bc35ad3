"""Jobs on a real Dask cluster: tiled Gram matrices, fit and trajectory jobs, cancel, delete,
failures, worker loss and API restarts."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import httpx
import numpy as np
import pytest

from core import kernels as core_kernels
from service.app import create_app
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.api.test_kernels import RELU3, RELU3_CORE
from tests.integration.conftest import upload, wait_for

pytestmark = pytest.mark.anyio
NETWORK = {"type": "network", "layers": RELU3}
RNG = np.random.default_rng(5)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def shared_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("jobs"), dask_workers=2, job_tile=32)


@pytest.fixture(scope="module")
async def client(shared_settings: Settings):
    app = create_app(shared_settings)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c):
        c.app = app  # type: ignore[attr-defined]
        yield c


def load_npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    return np.load(io.BytesIO(response.content), allow_pickle=False)


async def submit(client: httpx.AsyncClient, body: dict, status: int = 202) -> dict:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    if status == 202:
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()


async def test_gram_job_equals_the_synchronous_kernel(client: httpx.AsyncClient) -> None:
    x = RNG.normal(size=(150, 5))
    x_id = await upload(client, x)
    job = await submit(client, {"type": "gram", "kernel": NETWORK, "x1": x_id, "outputs": ["ntk", "nngp"]})
    assert job["status"] in ("queued", "running") and job["links"]["result"] == f"/v1/jobs/{job['id']}/result"
    seen: list[float] = []
    done = await wait_for(client, job["id"], on_poll=lambda j: seen.append(j["progress"]))
    assert done["status"] == "succeeded", done
    assert seen == sorted(seen) and done["progress"] == 1.0
    assert done["started_at"] and done["finished_at"]
    expected = core_kernels.gram(RELU3_CORE, x)
    ntk = load_npy(await client.get(f"/v1/jobs/{job['id']}/result"))
    np.testing.assert_allclose(ntk, expected["ntk"], rtol=1e-12)
    block = load_npy(await client.get(f"/v1/jobs/{job['id']}/result", params={"rows": "10:47", "output": "nngp"}))
    np.testing.assert_allclose(block, expected["nngp"][10:47], rtol=1e-12)
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result", params={"rows": "47:10"}), 422)
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result", params={"output": "kernel"}), 422)
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result", headers={"accept": "application/json"}), 406)


async def test_rectangular_float32_gram_job(client: httpx.AsyncClient) -> None:
    x1, x2 = RNG.normal(size=(70, 4)), RNG.normal(size=(45, 4))
    job = await submit(client, {"type": "gram", "kernel": {"type": "rbf", "lengthscale": 1.5},
                                "x1": await upload(client, x1), "x2": await upload(client, x2), "dtype": "float32"})
    assert (await wait_for(client, job["id"]))["status"] == "succeeded"
    matrix = load_npy(await client.get(f"/v1/jobs/{job['id']}/result"))
    assert matrix.dtype == np.float32 and matrix.shape == (70, 45)
    np.testing.assert_allclose(matrix, core_kernels.gram(core_kernels.RBF(1.5), x1, x2)["kernel"], rtol=1e-5)


async def test_fit_and_trajectory_jobs_match_the_synchronous_endpoints(client: httpx.AsyncClient) -> None:
    x, xt = RNG.normal(size=(40, 3)), RNG.normal(size=(6, 3))
    y = np.sin(x[:, 0])
    ids = {name: await upload(client, a) for name, a in {"x": x, "y": y, "xt": xt}.items()}
    fit = await submit(client, {"type": "fit", "kernel": NETWORK, "x_train": ids["x"], "y_train": ids["y"],
                                "ridge": 0.01})
    assert (await wait_for(client, fit["id"]))["status"] == "succeeded"
    model = (await client.get(f"/v1/jobs/{fit['id']}/result")).json()
    assert model["n_train"] == 40 and (await client.get(f"/v1/models/{model['id']}")).json() == model
    sync = (await client.post("/v1/models", json={"kernel": NETWORK, "x_train": x.tolist(), "y_train": y.tolist(),
                                                  "ridge": 0.01})).json()
    preds = [(await client.post(f"/v1/models/{m}/predictions", json={"x_test": xt.tolist()})).json()["mean"]
             for m in (model["id"], sync["id"])]
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-12)

    options = {"times": [0.0, 1.0, 10.0], "learning_rate": 0.5}
    traj = await submit(client, {"type": "trajectory", "kernel": NETWORK, "x_train": ids["x"], "y_train": ids["y"],
                                 "x_test": ids["xt"]} | options)
    assert (await wait_for(client, traj["id"]))["status"] == "succeeded"
    result = (await client.get(f"/v1/jobs/{traj['id']}/result")).json()
    direct = (await client.post("/v1/trajectories", json={"kernel": NETWORK, "x_train": x.tolist(),
                                                          "y_train": y.tolist(), "x_test": xt.tolist()} | options)).json()
    assert result.keys() == direct.keys()
    np.testing.assert_allclose(result["test_predictions"], direct["test_predictions"], rtol=1e-12)


async def test_cancel_then_delete(client: httpx.AsyncClient, shared_settings: Settings) -> None:
    x_id = await upload(client, RNG.normal(size=(1200, 8)))
    job = await submit(client, {"type": "gram", "kernel": NETWORK, "x1": x_id})
    await wait_for(client, job["id"], statuses=("running",))
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["progress"] < 1.0
    assert_problem(await client.post(f"/v1/jobs/{job['id']}/cancel"), 409)
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result"), 409)
    cancelled_list = (await client.get("/v1/jobs", params={"status": "cancelled"})).json()["items"]
    assert [j["id"] for j in cancelled_list] == [job["id"]]
    assert (await client.delete(f"/v1/jobs/{job['id']}")).status_code == 204
    assert_problem(await client.get(f"/v1/jobs/{job['id']}"), 404)
    assert not (Path(shared_settings.data_dir) / "jobs" / job["id"]).exists()


async def test_failures_end_as_failed_with_a_reason(client: httpx.AsyncClient, shared_settings: Settings) -> None:
    x_id = await upload(client, RNG.normal(size=(20, 3)))
    overflow = [{"type": "dense", "w_std": 1e30}, {"type": "relu"}] * 12 + [{"type": "dense"}]
    job = await submit(client, {"type": "gram", "kernel": {"type": "network", "layers": overflow}, "x1": x_id})
    failed = await wait_for(client, job["id"])
    assert failed["status"] == "failed" and "overflows" in failed["error"]["detail"]

    corrupt_id = await upload(client, RNG.normal(size=(50, 3)))
    (Path(shared_settings.data_dir) / "datasets" / f"{corrupt_id}.npy").write_bytes(b"\x93NUMPY garbage")
    job = await submit(client, {"type": "gram", "kernel": NETWORK, "x1": corrupt_id})
    failed = await wait_for(client, job["id"])
    assert failed["status"] == "failed" and "cannot be read" in failed["error"]["detail"], failed
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result"), 409)


async def test_job_requests_are_validated(client: httpx.AsyncClient) -> None:
    x_id = await upload(client, RNG.normal(size=(10, 3)))
    other = await upload(client, RNG.normal(size=(10, 4)))
    vector = await upload(client, RNG.normal(size=7))
    cases = [
        ({"type": "gram", "kernel": NETWORK, "x1": "ds_" + "0" * 24}, "no dataset"),
        ({"type": "gram", "kernel": NETWORK, "x1": x_id, "x2": other}, "x2 has 4 features but x1 has 3"),
        ({"type": "gram", "kernel": NETWORK, "x1": vector}, "x1 has rank 1"),
        ({"type": "fit", "kernel": NETWORK, "x_train": x_id, "y_train": vector}, "y_train has 7 rows but x_train has 10"),
        ({"type": "gram", "kernel": NETWORK, "x1": x_id, "outputs": ["kernel"]}, "unknown output"),
        ({"type": "mystery", "x1": x_id}, "does not match any of the expected tags"),
    ]
    for body, fragment in cases:
        assert fragment in assert_problem(await client.post("/v1/jobs", json=body), 422)["detail"]
    response = await client.post("/v1/jobs", json={"type": "gram", "kernel": NETWORK, "x1": x_id, "device": "gpu"})
    assert_problem(response, 503)
    assert int(response.headers["retry-after"]) > 0


CONV = {"type": "network", "layers": [
    {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"},
    {"type": "conv", "filter_shape": [2, 2], "strides": [2, 2], "w_std": 1.3}, {"type": "relu"},
    {"type": "global_avg_pool"}, {"type": "dense", "b_std": 0.1}]}
CONV1D = {"type": "network", "layers": [{"type": "conv", "filter_shape": [3], "padding": "CIRCULAR"}, {"type": "erf"},
                                        {"type": "flatten"}, {"type": "dense"}]}


async def test_convolutional_gram_jobs_equal_the_synchronous_kernel(client: httpx.AsyncClient) -> None:
    images = RNG.normal(size=(40, 6, 6, 2))  # 40 rows, tiles of 32: three tiles, one off the diagonal
    job = await submit(client, {"type": "gram", "kernel": CONV, "x1": await upload(client, images),
                                "outputs": ["ntk", "nngp"]})
    sequences, others = RNG.normal(size=(35, 5, 3)), RNG.normal(size=(9, 5, 3))
    rectangular = await submit(client, {"type": "gram", "kernel": CONV1D, "x1": await upload(client, sequences),
                                        "x2": await upload(client, others), "outputs": ["ntk"], "dtype": "float32"})
    assert (await wait_for(client, job["id"]))["status"] == "succeeded"
    sync = (await client.post("/v1/kernels", json={"kernel": CONV, "x1": images.tolist(),
                                                   "outputs": ["ntk", "nngp"]})).json()["results"]
    np.testing.assert_allclose(load_npy(await client.get(f"/v1/jobs/{job['id']}/result")), sync["ntk"], rtol=1e-12)
    block = load_npy(await client.get(f"/v1/jobs/{job['id']}/result", params={"rows": "30:40", "output": "nngp"}))
    np.testing.assert_allclose(block, np.array(sync["nngp"])[30:40], rtol=1e-12)

    assert (await wait_for(client, rectangular["id"]))["status"] == "succeeded"
    matrix = load_npy(await client.get(f"/v1/jobs/{rectangular['id']}/result"))
    assert matrix.dtype == np.float32 and matrix.shape == (35, 9)
    sync = (await client.post("/v1/kernels", json={"kernel": CONV1D, "x1": sequences.tolist(),
                                                   "x2": others.tolist(), "outputs": ["ntk"]})).json()["results"]
    np.testing.assert_allclose(matrix, sync["ntk"], rtol=1e-4)


async def test_fit_and_trajectory_jobs_on_images(client: httpx.AsyncClient) -> None:
    x, xt = RNG.normal(size=(12, 4, 4, 2)), RNG.normal(size=(5, 4, 4, 2))
    y = np.stack([x[:, 0, 0, 0], np.cos(x[:, 1, 1, 1])], axis=1)
    ids = {name: await upload(client, a) for name, a in {"x": x, "y": y, "xt": xt}.items()}
    fit = await submit(client, {"type": "fit", "kernel": CONV, "x_train": ids["x"], "y_train": ids["y"],
                                "ridge": 0.01})
    options = {"times": [0.5, 4.0], "ridge": 0.01}
    traj = await submit(client, {"type": "trajectory", "kernel": CONV, "x_train": ids["x"], "y_train": ids["y"],
                                 "x_test": ids["xt"]} | options)
    assert (await wait_for(client, fit["id"]))["status"] == "succeeded"
    model = (await client.get(f"/v1/jobs/{fit['id']}/result")).json()
    assert model["n_train"] == 12 and model["n_outputs"] == 2
    predict = {"x_test": xt.tolist(), "time": 4.0, "variance": True}
    job_prediction = (await client.post(f"/v1/models/{model['id']}/predictions", json=predict)).json()
    sync = (await client.post("/v1/models", json={"kernel": CONV, "x_train": x.tolist(), "y_train": y.tolist(),
                                                  "ridge": 0.01})).json()
    sync_prediction = (await client.post(f"/v1/models/{sync['id']}/predictions", json=predict)).json()
    for key in ("mean", "variance"):
        np.testing.assert_allclose(job_prediction[key], sync_prediction[key], rtol=1e-10, atol=1e-14)

    assert (await wait_for(client, traj["id"]))["status"] == "succeeded"
    result = (await client.get(f"/v1/jobs/{traj['id']}/result")).json()
    direct = (await client.post("/v1/trajectories", json={"kernel": CONV, "x_train": x.tolist(),
                                                          "y_train": y.tolist(), "x_test": xt.tolist()} | options))
    np.testing.assert_allclose(result["test_predictions"], direct.json()["test_predictions"], rtol=1e-10)
    np.testing.assert_allclose(result["test_predictions"][1], job_prediction["mean"], rtol=1e-10)


async def test_convolutional_jobs_on_gpu_are_422_not_503(client: httpx.AsyncClient) -> None:
    images = await upload(client, RNG.normal(size=(6, 4, 4, 2)).astype(np.float32))
    y = await upload(client, RNG.normal(size=6))
    for body in ({"type": "gram", "kernel": CONV, "x1": images, "device": "gpu"},
                 {"type": "fit", "kernel": CONV, "x_train": images, "y_train": y, "device": "gpu"}):
        problem = assert_problem(await client.post("/v1/jobs", json=body), 422)
        assert problem["errors"][0]["loc"] == ["body", "device"] and "CPU workers" in problem["detail"]


async def test_idempotent_job_creation(client: httpx.AsyncClient) -> None:
    x_id = await upload(client, RNG.normal(size=(10, 3)))
    body = {"type": "gram", "kernel": {"type": "linear"}, "x1": x_id}
    first = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "gram-1"})
    again = await client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "gram-1"})
    assert first.json()["id"] == again.json()["id"]
    assert_problem(await client.post("/v1/jobs", json=body | {"dtype": "float32"},
                                     headers={"Idempotency-Key": "gram-1"}), 422)


async def test_worker_killed_mid_job_still_succeeds(client: httpx.AsyncClient) -> None:
    x = RNG.normal(size=(700, 6))
    job = await submit(client, {"type": "gram", "kernel": NETWORK, "x1": await upload(client, x),
                                "outputs": ["ntk"]})
    await wait_for(client, job["id"], statuses=("running",))
    dask_client = await client.app.state.engine.client()  # type: ignore[attr-defined]
    pids = await dask_client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    done = await wait_for(client, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    np.testing.assert_allclose(load_npy(await client.get(f"/v1/jobs/{job['id']}/result")),
                               core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"], rtol=1e-12)


async def test_api_restart_mid_job_resumes_from_done_tiles(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dask_workers=2, job_tile=16)
    x = RNG.normal(size=(400, 6))
    first = create_app(settings)
    async with (first.router.lifespan_context(first),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://t") as c):
        job = await submit(c, {"type": "gram", "kernel": NETWORK, "x1": await upload(c, x), "outputs": ["ntk"]})
        await wait_for(c, job["id"], statuses=("running",))
        while (await c.get(f"/v1/jobs/{job['id']}")).json()["progress"] < 0.1:
            await asyncio.sleep(0.05)
    done_markers = tmp_path / "jobs" / job["id"] / "done"
    before = len(list(done_markers.iterdir()))
    second = create_app(settings)
    async with (second.router.lifespan_context(second),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://t") as c):
        interrupted = (await c.get(f"/v1/jobs/{job['id']}")).json()
        assert interrupted["status"] == "running" and interrupted["progress"] < 1.0
        done = await wait_for(c, job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        result = load_npy(await c.get(f"/v1/jobs/{job['id']}/result"))
    assert 0 < before < len(list(done_markers.iterdir()))
    np.testing.assert_allclose(result, core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"], rtol=1e-12)
