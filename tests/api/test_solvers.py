"""Fits with ``solver`` cg, nystrom and auto through the API (issue #10), against direct solves.

References are computed here independently: Gram matrices from ``core.kernels`` and the linear
systems by ``numpy.linalg.solve`` — ``(K + ρI) α = y`` for the exact fit and
``(K_nMᵀ K_nM + ρ K_MM) β = K_nMᵀ y`` for Nyström on the centers the model reports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from core import kernels as core_kernels
from core.kernels.spec import RBF
from service.app import create_app
from service.jobs.planning import plan_learning
from service.schemas.jobs import FitJob, TrajectoryJob
from service.settings import Settings
from service.storage.models import dual_model_meta, write_dual_model
from tests.api.test_dataset_inputs import dataset
from tests.api.test_errors import assert_problem
from tests.api.test_kernels import RELU3, RELU3_CORE

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(2)
X = RNG.normal(size=(40, 3))
XT = RNG.normal(size=(9, 3))
Y1 = np.sin(X[:, 0]) + 0.5 * X[:, 1]
Y2 = np.stack([Y1, np.cos(X[:, 2])], axis=1)
NETWORK = {"type": "network", "layers": RELU3}
KERNELS = {  # request spec, core spec, the matrix fitted
    "network": (NETWORK, RELU3_CORE, "ntk"),
    "rbf": ({"type": "rbf", "lengthscale": 1.3}, RBF(1.3), "kernel"),
}


@contextlib.asynccontextmanager
async def client_with(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process app on ``tmp_path/data`` with these settings."""
    app = create_app(Settings(data_dir=tmp_path / "data", **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


def gram(name: str, x1: np.ndarray, x2: np.ndarray | None = None) -> np.ndarray:
    _, spec, which = KERNELS[name]
    return core_kernels.gram(spec, x1, x2, outputs=[which])[which]


def absolute_ridge(kernel: np.ndarray, ridge: float, mode: str) -> float:
    return ridge if mode == "absolute" else ridge * np.trace(kernel) / kernel.shape[0]


def exact_predictions(name: str, y: np.ndarray, ridge: float, mode: str, x: np.ndarray = X,
                      xt: np.ndarray = XT) -> np.ndarray:
    k = gram(name, x)
    alpha = np.linalg.solve(k + absolute_ridge(k, ridge, mode) * np.eye(len(x)), y)
    out = gram(name, xt, x) @ alpha
    return out[:, None] if out.ndim == 1 else out


def nystrom_predictions(name: str, y: np.ndarray, ridge: float, mode: str, idx: np.ndarray, x: np.ndarray = X,
                        xt: np.ndarray = XT) -> np.ndarray:
    """``K(x*, X_M) β`` with β from a direct solve of the Nyström system (ρ from the full K)."""
    k = gram(name, x)
    k_nm = k[:, idx]
    beta = np.linalg.solve(k_nm.T @ k_nm + absolute_ridge(k, ridge, mode) * k[np.ix_(idx, idx)], k_nm.T @ y)
    out = gram(name, xt, x[idx]) @ beta
    return out[:, None] if out.ndim == 1 else out


async def fit(client: httpx.AsyncClient, name: str = "network", y: np.ndarray = Y1, x: np.ndarray = X,
              **fields: Any) -> dict:
    body = {"kernel": KERNELS[name][0], "x_train": x.tolist(), "y_train": y.tolist(), "ridge": 1e-3} | fields
    response = await client.post("/v1/models", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def predict(client: httpx.AsyncClient, model: dict, xt: np.ndarray = XT, **fields: Any) -> np.ndarray:
    response = await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": xt.tolist()} | fields)
    assert response.status_code == 200, response.text
    assert response.json()["variance"] is None
    return np.array(response.json()["mean"])


def assert_relative(actual: np.ndarray, reference: np.ndarray, rel: float) -> None:
    assert actual.shape == reference.shape
    error = np.abs(actual - reference).max() / np.abs(reference).max()
    assert error <= rel, f"relative error {error:.3g} > {rel}"


def center_indices(settings_dir: Path, model: dict) -> np.ndarray:
    return np.load(settings_dir / "data" / "models" / model["id"] / "center_indices.npy", allow_pickle=False)


@pytest.mark.parametrize("name", ["network", "rbf"])
@pytest.mark.parametrize("outputs", [1, 2])
@pytest.mark.parametrize("mode", ["absolute", "relative"])
async def test_cg_and_nystrom_with_all_centers_equal_the_exact_fit(tmp_path: Path, name: str, outputs: int,
                                                                   mode: str) -> None:
    y = Y1 if outputs == 1 else Y2
    reference = exact_predictions(name, y, 1e-3, mode)
    async with client_with(tmp_path, cg_preconditioner_rank=5) as client:  # a rank-5 preconditioner: CG iterates
        models = {solver: await fit(client, name, y, solver=solver, ridge_mode=mode, tol=1e-12, **extra)
                  for solver, extra in [("cholesky", {}), ("cg", {}), ("nystrom", {"centers": len(X)})]}
        for solver, model in models.items():
            assert model["solver"]["type"] == solver and model["n_outputs"] == outputs
            assert_relative(await predict(client, model), reference, 1e-6)
    assert models["cg"]["solver"]["iterations"] > 1
    assert models["cg"]["solver"]["relative_residual"] <= 1e-12
    assert models["nystrom"]["solver"]["centers"] == len(X)


async def test_the_preconditioner_cuts_cg_iterations(tmp_path: Path) -> None:
    """n = 200, relative ridge 1e-3, tol 1e-10: a rank-40 Nyström preconditioner more than halves the
    iterations (measured 193 → 79), and both answers are the exact fit."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    y = np.sin(x[:, 0])
    reference = exact_predictions("network", y, 1e-3, "relative", x)
    counts = {}
    for rank in (0, 40):
        async with client_with(tmp_path / str(rank), cg_preconditioner_rank=rank) as client:
            model = await fit(client, "network", y, x, solver="cg", ridge_mode="relative", tol=1e-10)
            counts[rank] = model["solver"]["iterations"]
            assert_relative(await predict(client, model), reference, 1e-6)
    assert counts[40] < counts[0] / 2, counts


@pytest.mark.parametrize("mode", ["absolute", "relative"])
async def test_nystrom_with_fewer_centers_solves_the_nystrom_system(tmp_path: Path, mode: str) -> None:
    async with client_with(tmp_path) as client:
        model = await fit(client, "network", Y2, solver="nystrom", centers=12, seed=5, ridge_mode=mode, tol=1e-12)
        idx = center_indices(tmp_path, model)
        assert idx.shape == (12,) and np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < len(X)
        mean = await predict(client, model)
    assert_relative(mean, nystrom_predictions("network", Y2, 1e-3, mode, idx), 1e-6)
    assert np.abs(mean - exact_predictions("network", Y2, 1e-3, mode)).max() > 1e-3  # an approximation indeed


@pytest.mark.parametrize(("name", "centers"), [("network", 150), ("rbf", 100)])
async def test_nystrom_with_fewer_centers_is_close_to_the_exact_test_error(tmp_path: Path, name: str,
                                                                          centers: int) -> None:
    """Margin: the Nyström test MSE is at most 5% above the exact fit's (n = 600, a quarter or a sixth of the
    points as centers, a smooth target with noise 0.2); with 5 centers it is far above (the test can fail)."""
    rng = np.random.default_rng(5)
    x, xt = rng.uniform(-1, 1, size=(600, 3)), rng.uniform(-1, 1, size=(300, 3))

    def target(z: np.ndarray) -> np.ndarray:
        return np.sin(2 * z[:, 0]) + 0.5 * np.cos(3 * z[:, 1]) + 0.3 * z[:, 2]

    y = target(x) + 0.2 * rng.normal(size=len(x))
    fields = {"ridge": 1e-2, "ridge_mode": "relative"}
    async with client_with(tmp_path) as client:
        exact = await fit(client, name, y, x, solver="cholesky", **fields)
        mse = {"exact": float((((await predict(client, exact, xt))[:, 0] - target(xt)) ** 2).mean())}
        for m in (centers, 5):
            model = await fit(client, name, y, x, solver="nystrom", centers=m, **fields)
            mse[m] = float((((await predict(client, model, xt))[:, 0] - target(xt)) ** 2).mean())
    assert mse[centers] <= 1.05 * mse["exact"], mse
    assert mse[5] > 1.5 * mse["exact"], mse


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
async def test_not_converging_is_a_422_reporting_the_residual(tmp_path: Path, solver: str) -> None:
    async with client_with(tmp_path, cg_preconditioner_rank=0) as client:
        extra = {"centers": 30} if solver == "nystrom" else {}
        body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y1.tolist(), "ridge": 1e-6, "solver": solver,
                "tol": 1e-14, "max_iter": 1} | extra
        problem = assert_problem(await client.post("/v1/models", json=body), 422)
        assert "relative residual" in problem["detail"] and "after 1 iterations" in problem["detail"]
        assert problem["errors"][0]["loc"] == ["body", "max_iter"]
        assert (await client.get("/v1/models")).json()["items"] == []  # nothing stored


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
async def test_time_variance_and_trajectories_on_dual_models_are_422(client: httpx.AsyncClient, solver: str) -> None:
    model = await fit(client, solver=solver)
    url = f"/v1/models/{model['id']}"
    for field, extra in [("time", {"time": 1.0}), ("variance", {"variance": True})]:
        problem = assert_problem(await client.post(f"{url}/predictions", json={"x_test": XT.tolist()} | extra), 422)
        assert problem["errors"][0]["loc"] == ["body", field] and solver in problem["detail"]
        assert "t = ∞" in problem["detail"]
    problem = assert_problem(await client.post(f"{url}/trajectory", json={"times": [1.0]}), 422)
    assert "krylov" in problem["detail"] and problem["errors"][0]["loc"] == ["path", "model_id"]
    cholesky = await fit(client, solver="cholesky")  # the dense model keeps doing all of it
    response = await client.post(f"/v1/models/{cholesky['id']}/predictions",
                                 json={"x_test": XT.tolist(), "time": 1.0, "variance": True})
    assert response.status_code == 200, response.text


async def test_model_documents_and_reproducible_centers(tmp_path: Path) -> None:
    async with client_with(tmp_path) as client:
        cholesky = await fit(client, solver="cholesky")
        assert cholesky["solver"] == {"type": "cholesky", "centers": len(X), "seed": None, "iterations": None,
                                      "relative_residual": None}
        cg = await fit(client, solver="cg", seed=4)
        assert cg["solver"]["type"] == "cg" and cg["solver"]["centers"] == len(X) and cg["solver"]["seed"] == 4
        assert cg["solver"]["iterations"] >= 1 and 0 <= cg["solver"]["relative_residual"] <= 1e-8
        assert cg["condition_number"] is None and cg["train_residual_norm"] >= 0
        first = await fit(client, solver="nystrom", centers=10, seed=7)
        again = await fit(client, solver="nystrom", centers=10, seed=7)
        other = await fit(client, solver="nystrom", centers=10, seed=8)
        assert first["solver"]["type"] == "nystrom" and first["solver"]["centers"] == 10
        assert first["solver"]["seed"] == 7 and first["solver"]["iterations"] >= 1
        assert first["solver"]["relative_residual"] <= 1e-8
        np.testing.assert_array_equal(center_indices(tmp_path, first), center_indices(tmp_path, again))
        assert not np.array_equal(center_indices(tmp_path, first), center_indices(tmp_path, other))
        np.testing.assert_array_equal(await predict(client, first), await predict(client, again))
        before = await predict(client, first)
        assert (await client.get(f"/v1/models/{first['id']}")).json() == first
        listed = {m["id"]: m for m in (await client.get("/v1/models")).json()["items"]}
        assert listed[first["id"]] == first and listed[cg["id"]] == cg
        folder = tmp_path / "data" / "models" / first["id"]
        np.testing.assert_array_equal(np.load(folder / "centers_x.npy"), X[center_indices(tmp_path, first)])
    async with client_with(tmp_path) as client:  # a restarted service loads the dual models from disk
        assert (await client.get(f"/v1/models/{first['id']}")).json() == first
        np.testing.assert_array_equal(await predict(client, first), before)
        assert (await client.delete(f"/v1/models/{first['id']}")).status_code == 204
        assert_problem(await client.get(f"/v1/models/{first['id']}"), 404)
        assert not folder.exists()


async def test_auto_picks_cholesky_for_small_sets_and_nystrom_when_the_dense_solve_is_too_big(
        tmp_path: Path) -> None:
    async with client_with(tmp_path / "a") as client:
        model = await fit(client)
        assert model["solver"]["type"] == "cholesky" and model["condition_number"] > 1
    async with client_with(tmp_path / "b", dense_solve_max_bytes=25 * 39**2) as client:  # room for n = 39, not 40
        model = await fit(client, tol=1e-12)
        assert model["solver"]["type"] == "nystrom"
        assert model["solver"]["centers"] == len(X)  # the default: all points while n ≤ 1000
        assert_relative(await predict(client, model), exact_predictions("network", Y1, 1e-3, "absolute"), 1e-6)
        assert (await fit(client, x=X[:39], y=Y1[:39]))["solver"]["type"] == "cholesky"
    async with client_with(tmp_path / "c", dense_solve_max_bytes=0, max_nystrom_centers=7) as client:
        model = await fit(client)
        assert model["solver"]["type"] == "nystrom" and model["solver"]["centers"] == 7  # capped by the setting
        assert (await fit(client, centers=5))["solver"]["centers"] == 5


@pytest.mark.parametrize(("fields", "loc"), [
    ({"solver": "lu"}, ["body", "solver"]),
    ({"solver": "eigh"}, ["body", "solver"]),
    ({"tol": 0}, ["body", "tol"]),
    ({"tol": 1.5}, ["body", "tol"]),
    ({"tol": "1e-8"}, ["body", "tol"]),
    ({"max_iter": 0}, ["body", "max_iter"]),
    ({"max_iter": 2.5}, ["body", "max_iter"]),
    ({"centers": 0, "solver": "nystrom"}, ["body", "centers"]),
    ({"centers": 41, "solver": "nystrom"}, ["body", "centers"]),
    ({"centers": 41}, ["body", "centers"]),
    ({"centers": 10, "solver": "cholesky"}, ["body", "centers"]),
    ({"centers": 10, "solver": "cg"}, ["body", "centers"]),
    ({"seed": -1}, ["body", "seed"]),
    ({"seed": True}, ["body", "seed"]),
])
async def test_invalid_solver_fields_are_422_at_the_field(client: httpx.AsyncClient, fields: dict,
                                                          loc: list) -> None:
    body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y1.tolist()} | fields
    problem = assert_problem(await client.post("/v1/models", json=body), 422)
    assert problem["errors"][0]["loc"][:len(loc)] == loc, problem


async def test_too_many_centers_is_a_413_naming_the_setting(tmp_path: Path) -> None:
    async with client_with(tmp_path, max_nystrom_centers=20) as client:
        body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y1.tolist(), "solver": "nystrom", "centers": 30}
        problem = assert_problem(await client.post("/v1/models", json=body), 413)
        assert "NTK_MAX_NYSTROM_CENTERS" in problem["detail"]


async def test_dual_model_staged_by_a_worker_predicts_from_the_linked_inputs(tmp_path: Path) -> None:
    """The functions fit jobs use (write_dual_model with the training inputs' path, dual_model_meta)."""
    x32 = X.astype(np.float32)
    source = tmp_path / "x_train.npy"
    np.save(source, x32)
    beta = np.random.default_rng(1).normal(size=len(X))
    async with client_with(tmp_path) as client:
        store = client._transport.app.state.storage  # type: ignore[attr-defined]
        model_id = "mdl_" + "ab" * 12
        write_dual_model(store.models.staging_folder(model_id), source, None, beta)
        meta = {"kernel": NETWORK, "which": "ntk", "ridge": 1e-3, "ridge_mode": "absolute"} | dual_model_meta(
            solver="cg", n_train=len(X), n_outputs=1, y_was_1d=True, ridge_effective=1e-3, train_residual_norm=0.5,
            centers=len(X), seed=0, iterations=12, relative_residual=3e-9)
        store.models.register(model_id, "", meta)
        document = (await client.get(f"/v1/models/{model_id}")).json()
        assert document["solver"] == {"type": "cg", "centers": 40, "seed": 0, "iterations": 12,
                                      "relative_residual": 3e-9}
        mean = await predict(client, document)
    assert (tmp_path / "data" / "models" / model_id / "centers_x.npy").stat().st_ino == source.stat().st_ino
    reference = core_kernels.gram(RELU3_CORE, XT, x32.astype(np.float64))["ntk"] @ beta
    np.testing.assert_allclose(mean[:, 0], reference, rtol=1e-10)


async def _job(client: httpx.AsyncClient, kind: str, x: np.ndarray, y: np.ndarray, **fields: Any
               ) -> httpx.Response:
    body = {"type": kind, "kernel": NETWORK, "x_train": await dataset(client, x),
            "y_train": await dataset(client, y), "ridge": 1e-3} | fields
    return await client.post("/v1/jobs", json=body)


@pytest.mark.parametrize(("kind", "solver", "suggests"), [
    ("fit", "cholesky", "solver \"cg\" or \"nystrom\""), ("fit", "auto", None),
    ("trajectory", "eigh", "solver \"krylov\""), ("trajectory", "auto", None),
])
async def test_job_train_size_limits_by_solver(tmp_path: Path, kind: str, solver: str, suggests: str | None) -> None:
    """The dense solves stop at NTK_MAX_JOB_TRAIN_SIZE (413 suggesting the matrix-free solvers); auto goes
    matrix-free there, bounded by NTK_MAX_ITERATIVE_TRAIN_SIZE."""
    extra = {"times": [1.0]} if kind == "trajectory" else {}
    async with client_with(tmp_path, max_job_train_size=30, max_iterative_train_size=35) as client:
        response = await _job(client, kind, X, Y1, solver=solver, **extra)
        problem = assert_problem(response, 413)
        if suggests is not None:
            assert "NTK_MAX_JOB_TRAIN_SIZE" in problem["detail"] and suggests in problem["detail"]
        else:  # auto chose nystrom / krylov, which stop at the iterative bound
            assert "NTK_MAX_ITERATIVE_TRAIN_SIZE" in problem["detail"]


@pytest.mark.parametrize(("fields", "loc"), [
    ({"type": "trajectory", "times": [1.0], "solver": "cg"}, ["body", "trajectory", "solver"]),
    ({"type": "trajectory", "times": [1.0], "include": ["losses"]}, ["body", "trajectory", "include", 0]),
    ({"type": "trajectory", "times": [1.0], "include": ["test_predictions"] * 2}, ["body", "trajectory", "include"]),
    ({"type": "trajectory", "times": [1.0], "centers": 3}, ["body", "trajectory", "centers"]),
    ({"type": "fit", "solver": "krylov"}, ["body", "fit", "solver"]),
    ({"type": "fit", "solver": "cg", "centers": 3}, ["body", "centers"]),
])
async def test_invalid_job_solver_fields_are_422(client: httpx.AsyncClient, fields: dict, loc: list) -> None:
    fields = dict(fields)
    problem = assert_problem(await _job(client, fields.pop("type"), X, Y1, **fields), 422)
    assert problem["errors"][0]["loc"][:len(loc)] == loc, problem


async def test_job_plans_carry_the_resolved_solver(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", max_job_train_size=30, cg_preconditioner_rank=25,
                        max_result_entries=100)
    app = create_app(settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        x_id, y_id, xt_id = await dataset(client, X), await dataset(client, Y2), await dataset(client, XT)
        common = {"kernel": NETWORK, "x_train": x_id, "y_train": y_id, "ridge": 1e-3}

        def plan(body: FitJob | TrajectoryJob, folder: str) -> dict:
            return plan_learning(settings, app.state.storage, "", body, tmp_path / folder)

        auto = plan(FitJob(type="fit", **common, tol=1e-6, seed=3), "auto")
        assert auto["solver"] == "nystrom" and auto["centers"] == 40 and auto["seed"] == 3 and auto["tol"] == 1e-6
        assert auto["preconditioner_rank"] is None and auto["n_train"] == 40 and auto["n_outputs"] == 2
        assert auto["model_meta"]["ridge"] == 1e-3 and auto["model_id"].startswith("mdl_")
        cg = plan(FitJob(type="fit", **common, solver="cg", max_iter=50), "cg")
        assert cg["solver"] == "cg" and cg["preconditioner_rank"] == 25 and cg["centers"] is None
        assert cg["max_iter"] == 50
        few = plan(FitJob(type="fit", **common, centers=8), "few")
        assert few["solver"] == "nystrom" and few["centers"] == 8
        trajectory = plan(TrajectoryJob(type="trajectory", **common, times=[0.5], x_test=xt_id, tol=1e-7,
                                        include=["test_predictions"]), "trajectory")
        assert trajectory["solver"] == "krylov" and trajectory["n_test"] == 9
        assert trajectory["options"]["include"] == ["test_predictions"] and trajectory["options"]["tol"] == 1e-7
        assert trajectory["options"]["times"] == [0.5] and trajectory["options"]["max_iter"] == 1000
        # the JSON bound counts the included arrays only: 3 times × 40 points × 2 outputs = 240 > 100
        three = {"times": [0.0, 1.0, 2.0], "solver": "krylov"}
        losses_only = plan(TrajectoryJob(type="trajectory", **common, **three, include=[]), "losses")
        assert losses_only["options"]["include"] == []
        problem = assert_problem(await client.post("/v1/jobs", json={"type": "trajectory", **common, **three}), 413)
        assert "NTK_MAX_RESULT_ENTRIES" in problem["detail"]


async def test_models_stored_before_solvers_existed_read_as_cholesky(tmp_path: Path) -> None:
    async with client_with(tmp_path) as client:
        model = await fit(client)
        before = await predict(client, model, time=2.0)
        store = client._transport.app.state.storage  # type: ignore[attr-defined]
        meta = json.loads(store.db.query("SELECT meta FROM models WHERE id=?", (model["id"],))[0]["meta"])
        del meta["solver"]  # the ledger row as written before issue #10
        store.db.execute("UPDATE models SET meta=? WHERE id=?", (json.dumps(meta), model["id"]))
    async with client_with(tmp_path) as client:
        assert (await client.get(f"/v1/models/{model['id']}")).json() == model
        np.testing.assert_array_equal(await predict(client, model, time=2.0), before)
