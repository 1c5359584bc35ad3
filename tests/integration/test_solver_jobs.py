"""Iterative solver jobs on a real Dask cluster: cg and nystrom fits, krylov trajectories, their
progress, cancellation, non-convergence and a worker killed mid-solve. References are direct
numpy/scipy solves of the same Gram matrix (``core.kernels.gram``) and the ``eigh`` trajectory job."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.linalg

from core import kernels as core_kernels
from service.app import create_app
from service.jobs.operator import KernelSource, TiledKernel
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.api.test_kernels import RELU3, RELU3_CORE
from tests.integration.conftest import upload, wait_for

pytestmark = pytest.mark.anyio
NETWORK = {"type": "network", "layers": RELU3}
RNG = np.random.default_rng(10)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # tiles of 64 rows: several tiles per product even for these small training sets; a weak cg
    # preconditioner (8 points), so that cg takes enough iterations to be cancelled or interrupted
    return Settings(data_dir=tmp_path_factory.mktemp("solvers"), dask_workers=2, job_tile=64,
                    cg_preconditioner_rank=8)


@pytest.fixture(scope="module")
async def client(settings: Settings):
    app = create_app(settings)
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c):
        c.app = app  # type: ignore[attr-defined]
        yield c


async def submit(client: httpx.AsyncClient, body: dict) -> dict:
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(actual) - expected) / np.linalg.norm(expected))


def direct_fit(x: np.ndarray, y: np.ndarray, ridge: float, mode: str) -> tuple[np.ndarray, float]:
    """α = (K + ρI)⁻¹ y by a dense scipy solve, and ρ."""
    k = core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"]
    rho = ridge * np.trace(k) / len(x) if mode == "relative" else ridge
    return scipy.linalg.solve(k + rho * np.eye(len(x)), y, assume_a="pos"), rho


def job_folder(settings: Settings, job: dict) -> Path:
    return Path(settings.data_dir) / "jobs" / job["id"]


def _operator_products(job_dir: str, x_path: str, xt_path: str, v: np.ndarray, u: np.ndarray) -> dict:
    """Runs on a worker, like a driver: every product of the tiled operators, with 3 tasks a product."""
    from distributed import worker_client

    with worker_client() as dask:
        square = TiledKernel(dask, KernelSource(RELU3_CORE, "ntk", x_path, None, job_dir), tile=16, name="k",
                             key="t", cache_bytes=10**6, max_tasks=3)
        cross = TiledKernel(dask, KernelSource(RELU3_CORE, "ntk", xt_path, x_path, job_dir), tile=16, name="c",
                            key="t", max_tasks=3)
        first = square.matmat(v)
        return {"K v": first, "K v (cached)": square.matmat(v), "K v (1-d)": square.matmat(v[:, 0]),
                "diag K": square.diagonal(), "K": square.dense(), "Kt v": cross.matmat(v), "Ktᵀ u": cross.rmatmat(u),
                "Ktᵀ Kt v": cross.normal(v), "Kt": cross.dense(), "groups": len(square.groups),
                "cache": square.cache_report}


async def test_tiled_kernel_products_equal_the_dense_products(client: httpx.AsyncClient, tmp_path: Path) -> None:
    x, xt = RNG.normal(size=(70, 3)), RNG.normal(size=(37, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xt.npy", xt.astype(np.float32))
    v, u = RNG.normal(size=(70, 2)), RNG.normal(size=(37, 2))
    dask = await client.app.state.engine.client()  # type: ignore[attr-defined]
    got = await dask.submit(_operator_products, str(tmp_path), str(tmp_path / "x.npy"), str(tmp_path / "xt.npy"),
                            v, u, pure=False)
    k = core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"]
    kt = core_kernels.gram(RELU3_CORE, xt.astype(np.float32).astype(np.float64), x, outputs=["ntk"])["ntk"]
    expected = {"K v": k @ v, "K v (cached)": k @ v, "K v (1-d)": k @ v[:, 0], "diag K": np.diag(k), "K": k,
                "Kt v": kt @ v, "Ktᵀ u": kt.T @ u, "Ktᵀ Kt v": kt.T @ (kt @ v), "Kt": kt}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-12 * np.abs(value).max(), err_msg=name)
    assert got["groups"] == 3  # 5 row blocks: 15 tiles in 3 tasks of 5
    assert got["cache"]["tiles"] == 15 and got["cache"]["cache_faster"] is not None  # measured, then decided


async def test_cg_and_nystrom_fit_jobs_equal_a_direct_solve(client: httpx.AsyncClient, settings: Settings) -> None:
    x, xt = RNG.normal(size=(150, 4)), RNG.normal(size=(7, 4))
    y = np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1)
    ids = {name: await upload(client, a) for name, a in {"x": x, "y": y, "y1": y[:, 0]}.items()}
    cases = [("cg", ids["y"], y, 1e-2, "relative", {}), ("nystrom", ids["y"], y, 1e-3, "relative", {"centers": 150}),
             ("cg", ids["y1"], y[:, 0], 0.05, "absolute", {"tol": 1e-9}),
             ("nystrom", ids["y1"], y[:, 0], 0.05, "absolute", {"centers": 150, "seed": 3})]
    jobs = [await submit(client, {"type": "fit", "kernel": NETWORK, "x_train": ids["x"], "y_train": y_id,
                                  "ridge": ridge, "ridge_mode": mode, "solver": solver} | extra)
            for solver, y_id, _, ridge, mode, extra in cases]
    cross = core_kernels.gram(RELU3_CORE, xt, x, outputs=["ntk"])["ntk"]
    for job, (solver, _, target, ridge, mode, extra) in zip(jobs, cases, strict=True):
        done = await wait_for(client, job["id"])
        assert done["status"] == "succeeded", done
        model = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
        assert (await client.get(f"/v1/models/{model['id']}")).json() == model
        alpha, rho = direct_fit(x, target, ridge, mode)
        info = model["solver"]
        assert info["type"] == solver and info["centers"] == 150 and info["iterations"] >= 1
        assert info["seed"] == extra.get("seed", 0) and info["relative_residual"] <= extra.get("tol", 1e-8)
        stored = np.load(Path(settings.data_dir) / "models" / model["id"] / "coefficients.npy")
        assert relative(stored.reshape(alpha.shape), alpha) < 1e-6
        k = core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"]
        assert model["train_residual_norm"] == pytest.approx(np.linalg.norm(k @ alpha - target), rel=1e-5)
        predictions = (await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": xt.tolist()})).json()
        expected = cross @ alpha
        assert relative(np.asarray(predictions["mean"]).reshape(expected.shape), expected) < 1e-6
        assert not (job_folder(settings, job) / "cache").exists()  # the tile cache goes with the job's end


async def test_krylov_trajectory_jobs_equal_the_eigh_jobs(client: httpx.AsyncClient) -> None:
    x, xt = RNG.normal(size=(100, 3)), RNG.normal(size=(9, 3))
    y = np.stack([np.cos(x[:, 0]), x[:, 1]], axis=1)
    yt = np.stack([np.cos(xt[:, 0]), xt[:, 1]], axis=1)
    ids = {name: await upload(client, a) for name, a in {"x": x, "y": y, "xt": xt, "yt": yt}.items()}
    base = {"type": "trajectory", "kernel": NETWORK, "x_train": ids["x"], "y_train": ids["y"], "x_test": ids["xt"],
            "y_test": ids["yt"], "ridge": 1e-3, "ridge_mode": "relative"}
    lam_max = np.linalg.eigvalsh(core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"])[-1]
    runs = {"flow": {"method": "flow", "times": [0.0, 0.5, 3.0, 40.0], "learning_rate": 2.0},
            "gd": {"method": "gd", "times": [0, 1, 10, 200], "learning_rate": 1.5 / lam_max,
                   "loss_normalization": "sum"}}
    jobs = {(name, solver): await submit(client, base | options | {"solver": solver, "tol": 1e-11, "max_iter": 100})
            for name, options in runs.items() for solver in ("eigh", "krylov")}
    results = {}
    for key, job in jobs.items():
        done = await wait_for(client, job["id"])
        assert done["status"] == "succeeded", done
        results[key] = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    for name in runs:
        eigh, krylov = results[(name, "eigh")], results[(name, "krylov")]
        assert eigh.get("solver") is None and krylov["solver"]["type"] == "krylov"
        assert krylov["solver"]["iterations"] <= 100 and krylov["solver"]["estimated_error"] <= 1e-8
        assert krylov["times"] == eigh["times"]
        for field in ("train_predictions", "test_predictions", "train_loss", "test_loss"):
            assert relative(krylov[field], np.asarray(eigh[field])) < 1e-6, (name, field)
        assert krylov["eigenvalues"][0] == pytest.approx(eigh["eigenvalues"][0], rel=1e-9)
        assert krylov["max_stable_learning_rate"] == pytest.approx(eigh["max_stable_learning_rate"], rel=1e-9)

    job_id = jobs[("flow", "krylov")]["id"]
    download = await client.get(f"/v1/jobs/{job_id}/result", params={"output": "train_predictions"})
    assert download.status_code == 200 and download.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(download.content), allow_pickle=False)
    np.testing.assert_array_equal(array, np.asarray(results[("flow", "krylov")]["train_predictions"]))
    times = await client.get(f"/v1/jobs/{job_id}/result", params={"output": "test_predictions", "rows": "1:3"})
    np.testing.assert_array_equal(np.load(io.BytesIO(times.content)),
                                  np.asarray(results[("flow", "krylov")]["test_predictions"])[1:3])
    part = await client.get(f"/v1/jobs/{job_id}/result", params={"output": "train_predictions"},
                            headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == download.content[100:]
    head = await client.head(f"/v1/jobs/{job_id}/result", params={"output": "train_predictions"})
    assert head.status_code == 200 and int(head.headers["content-length"]) == len(download.content)
    document = await client.head(f"/v1/jobs/{job_id}/result")
    assert document.status_code == 200 and document.headers["content-type"] == "application/json"
    assert_problem(await client.get(f"/v1/jobs/{job_id}/result", params={"output": "kernel"}), 422)
    assert_problem(await client.get(f"/v1/jobs/{job_id}/result", headers={"accept": "application/x-npy"}), 406)

    only_losses = await submit(client, base | runs["flow"] | {"solver": "krylov", "include": ["test_predictions"]})
    assert (await wait_for(client, only_losses["id"]))["status"] == "succeeded"
    result = (await client.get(f"/v1/jobs/{only_losses['id']}/result")).json()
    assert result["train_predictions"] is None and result["test_predictions"] is not None
    served = await client.get(f"/v1/jobs/{only_losses['id']}/result", params={"output": "train_predictions"})
    assert relative(np.load(io.BytesIO(served.content)), np.asarray(results[("flow", "eigh")]["train_predictions"])) \
        < 1e-6


async def _slow_cg_job(client: httpx.AsyncClient, n: int, ridge: float = 1e-4, **extra: object
                       ) -> tuple[dict, np.ndarray, np.ndarray]:
    """A cg job of many iterations: n points, a small (relative) ridge, the weak preconditioner."""
    x = RNG.normal(size=(n, 6))
    y = np.sin(2 * x[:, 0]) + x[:, 1]
    body = {"type": "fit", "kernel": NETWORK, "x_train": await upload(client, x), "y_train": await upload(client, y),
            "ridge": ridge, "ridge_mode": "relative", "solver": "cg", "tol": 1e-9} | extra
    return await submit(client, body), x, y


async def test_progress_grows_and_cancel_stops_the_solve(client: httpx.AsyncClient, settings: Settings) -> None:
    job, _, _ = await _slow_cg_job(client, 400, max_iter=5000)
    folder = job_folder(settings, job)
    seen: list[float] = []
    while len(set(seen)) < 3:
        status = (await client.get(f"/v1/jobs/{job['id']}")).json()
        assert status["status"] == "running", status
        seen.append(status["progress"])
        await asyncio.sleep(0.1)
    assert seen == sorted(seen) and 0 < seen[-1] < 1
    started = time.monotonic()
    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    took = time.monotonic() - started
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    print(f"cancel returned after {took:.2f} s")  # the driver and its tiles have stopped by then
    progress = (folder / "progress.json").read_bytes()
    await asyncio.sleep(1.0)
    assert (folder / "progress.json").read_bytes() == progress  # no iteration after the cancel
    assert not (folder / "cache").exists()
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["status"] == "cancelled"
    assert_problem(await client.get(f"/v1/jobs/{job['id']}/result"), 409)


async def test_not_converging_fails_with_the_residual_reached(client: httpx.AsyncClient) -> None:
    job, _, _ = await _slow_cg_job(client, 150, max_iter=3, tol=1e-12)
    failed = await wait_for(client, job["id"])
    assert failed["status"] == "failed"
    detail = failed["error"]["detail"]
    assert "relative residual" in detail and "after 3 iterations" in detail and "max_iter" in detail, detail


async def test_worker_killed_mid_solve_still_succeeds(client: httpx.AsyncClient, settings: Settings) -> None:
    job, x, y = await _slow_cg_job(client, 300, ridge=1e-3)
    folder = job_folder(settings, job)
    while not (folder / "checkpoint.npy.json").exists():
        status = (await client.get(f"/v1/jobs/{job['id']}")).json()
        assert status["status"] == "running", status
        await asyncio.sleep(0.05)
    first = json.loads((folder / "driver.json").read_text())
    assert first["attempt"] == 1
    os.kill(first["pid"], signal.SIGKILL)  # the worker process running the driver
    done = await wait_for(client, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    second = json.loads((folder / "driver.json").read_text())
    assert second["attempt"] == 2 and second["pid"] != first["pid"] and second["resumed_from"] >= 5
    model = (await client.get(f"/v1/jobs/{job['id']}/result")).json()
    alpha, _ = direct_fit(x, y, 1e-3, "relative")
    stored = np.load(Path(settings.data_dir) / "models" / model["id"] / "coefficients.npy")
    assert relative(stored[:, 0], alpha) < 1e-6
    assert model["solver"]["iterations"] > second["resumed_from"]


async def test_api_restart_mid_solve_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, dask_workers=2, job_tile=160, cg_preconditioner_rank=8)  # 3 tiles
    first = create_app(settings)
    async with (first.router.lifespan_context(first),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=first), base_url="http://t") as c):
        job, x, y = await _slow_cg_job(c, 300, ridge=1e-3)
        while not (job_folder(settings, job) / "checkpoint.npy.json").exists():
            assert (await c.get(f"/v1/jobs/{job['id']}")).json()["status"] in ("queued", "running")
            await asyncio.sleep(0.05)
    second = create_app(settings)
    async with (second.router.lifespan_context(second),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=second), base_url="http://t") as c):
        done = await wait_for(c, job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        model = (await c.get(f"/v1/jobs/{job['id']}/result")).json()
    record = json.loads((job_folder(settings, job) / "driver.json").read_text())
    assert record["attempt"] >= 2 and record["resumed_from"] >= 5
    alpha, _ = direct_fit(x, y, 1e-3, "relative")
    stored = np.load(tmp_path / "models" / model["id"] / "coefficients.npy")
    assert relative(stored[:, 0], alpha) < 1e-6
