"""Models, predictions, trajectories and spectra through the API, against direct references."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import scipy.linalg
from sklearn.kernel_ridge import KernelRidge

from core import kernels as core_kernels
from service.app import create_app
from tests.api.test_errors import assert_problem
from tests.api.test_kernels import RELU3, RELU3_CORE

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(11)
X = RNG.normal(size=(12, 3))
Y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
XT = RNG.normal(size=(5, 3))
NETWORK = {"type": "network", "layers": RELU3}


async def create(client: httpx.AsyncClient, **overrides) -> dict:
    body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist(), "ridge": 1e-3} | overrides
    response = await client.post("/v1/models", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/models/{response.json()['id']}"
    return response.json()


async def test_model_lifecycle(client: httpx.AsyncClient) -> None:
    model = await create(client)
    assert model["n_train"] == 12 and model["n_outputs"] == 1 and model["which"] == "ntk"
    assert model["kernel"]["type"] == "network" and model["ridge_mode"] == "absolute"
    assert model["condition_number"] > 1 and model["train_residual_norm"] >= 0
    assert (await client.get(f"/v1/models/{model['id']}")).json() == model
    assert [m["id"] for m in (await client.get("/v1/models")).json()["items"]] == [model["id"]]
    assert (await client.delete(f"/v1/models/{model['id']}")).status_code == 204
    assert_problem(await client.get(f"/v1/models/{model['id']}"), 404)
    assert_problem(await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": XT.tolist()}), 404)


async def test_predictions_match_scikit_learn_kernel_ridge(client: httpx.AsyncClient) -> None:
    model = await create(client, ridge=0.05)
    response = await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": XT.tolist()})
    assert response.status_code == 200, response.text
    k = core_kernels.gram(RELU3_CORE, X)["ntk"]
    kt = core_kernels.gram(RELU3_CORE, XT, X)["ntk"]
    reference = KernelRidge(alpha=0.05, kernel="precomputed").fit(k, Y).predict(kt)
    np.testing.assert_allclose(np.array(response.json()["mean"])[:, 0], reference, rtol=1e-8, atol=1e-10)
    assert response.json()["variance"] is None


async def test_relative_ridge_and_multi_output(client: httpx.AsyncClient) -> None:
    y2 = np.stack([Y, Y**2], axis=1)
    model = await create(client, kernel={"type": "rbf", "lengthscale": 1.3}, y_train=y2.tolist(), ridge=0.1,
                         ridge_mode="relative")
    assert model["which"] == "kernel" and model["n_outputs"] == 2
    mean = (await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": XT.tolist()})).json()["mean"]
    k = np.exp(-((X[:, None] - X[None]) ** 2).sum(-1) / (2 * 1.3**2))
    kt = np.exp(-((XT[:, None] - X[None]) ** 2).sum(-1) / (2 * 1.3**2))
    alpha = np.linalg.solve(k + 0.1 * np.trace(k) / 12 * np.eye(12), y2)
    np.testing.assert_allclose(mean, kt @ alpha, rtol=1e-8)


async def test_flow_trajectory_matches_matrix_exponential(client: httpx.AsyncClient) -> None:
    times = [0.0, 0.5, 3.0, 40.0]
    body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist(), "times": times, "learning_rate": 0.7,
            "x_test": XT.tolist(), "y_test": np.cos(XT[:, 0]).tolist()}
    response = await client.post("/v1/trajectories", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    k = core_kernels.gram(RELU3_CORE, X)["ntk"]
    kt = core_kernels.gram(RELU3_CORE, XT, X)["ntk"]
    n = len(Y)
    for i, t in enumerate(times):
        train = Y - scipy.linalg.expm(-0.7 * k * t / n) @ Y  # u(t) = e^{−ηKt/N} u(0), f_0 = 0
        np.testing.assert_allclose(np.array(out["train_predictions"][i])[:, 0], train, rtol=1e-7, atol=1e-9)
        alpha = np.linalg.pinv(k) @ (np.eye(n) - scipy.linalg.expm(-0.7 * k * t / n)) @ Y
        np.testing.assert_allclose(np.array(out["test_predictions"][i])[:, 0], kt @ alpha, rtol=1e-6, atol=1e-8)
        assert out["train_loss"][i] == pytest.approx(((train - Y) ** 2).sum() / (2 * n), rel=1e-7, abs=1e-12)
    assert all(a >= b - 1e-12 for a, b in zip(out["train_loss"], out["train_loss"][1:], strict=False))
    np.testing.assert_allclose(out["eigenvalues"], np.sort(np.linalg.eigvalsh(k))[::-1], rtol=1e-8, atol=1e-10)
    assert out["max_stable_learning_rate"] == pytest.approx(2 * n / np.linalg.eigvalsh(k).max(), rel=1e-8)


async def test_gd_trajectory_matches_repeated_steps_and_model_route(client: httpx.AsyncClient) -> None:
    k = core_kernels.gram(core_kernels.TwoLayerRelu(), X)["ntk"]
    eta = 1.8 / np.linalg.eigvalsh(k).max()  # below the stable maximum 2N/λ_max (N = 1 for "sum")
    model = await create(client, ridge=0.0, kernel={"type": "two_layer_relu"})
    options = {"times": [0, 1, 5, 20], "method": "gd", "learning_rate": eta, "loss_normalization": "sum"}
    on_model = (await client.post(f"/v1/models/{model['id']}/trajectory", json=options)).json()
    one_shot = (await client.post("/v1/trajectories", json=options | {
        "kernel": {"type": "two_layer_relu"}, "x_train": X.tolist(), "y_train": Y.tolist()})).json()
    assert on_model == one_shot
    assert on_model["max_stable_learning_rate"] == pytest.approx(eta * 2 / 1.8, rel=1e-8)
    f, steps = np.zeros_like(Y), {0: np.zeros_like(Y)}
    for s in range(1, 21):
        f = f - eta * k @ (f - Y)  # one gradient step on L = ½‖f − y‖² of the linearized network
        steps[s] = f.copy()
    for i, s in enumerate(options["times"]):
        np.testing.assert_allclose(np.array(on_model["train_predictions"][i])[:, 0], steps[s], rtol=1e-7,
                                   atol=1e-9)


async def test_finite_time_prediction_equals_trajectory(client: httpx.AsyncClient) -> None:
    model = await create(client)
    pred = (await client.post(f"/v1/models/{model['id']}/predictions",
                              json={"x_test": XT.tolist(), "time": 2.5, "learning_rate": 0.5})).json()
    traj = (await client.post(f"/v1/models/{model['id']}/trajectory",
                              json={"times": [2.5], "learning_rate": 0.5, "x_test": XT.tolist()})).json()
    np.testing.assert_allclose(pred["mean"], traj["test_predictions"][0], rtol=1e-10)
    at_infinity = (await client.post(f"/v1/models/{model['id']}/predictions", json={"x_test": XT.tolist()})).json()
    late = (await client.post(f"/v1/models/{model['id']}/predictions",
                              json={"x_test": XT.tolist(), "time": 1e9})).json()
    np.testing.assert_allclose(late["mean"], at_infinity["mean"], rtol=1e-6, atol=1e-9)


async def test_nngp_variance_is_the_gp_posterior(client: httpx.AsyncClient) -> None:
    model = await create(client, which="nngp", ridge=0.01)
    out = (await client.post(f"/v1/models/{model['id']}/predictions",
                             json={"x_test": XT.tolist(), "variance": True})).json()
    k = core_kernels.gram(RELU3_CORE, X)["nngp"]
    kt = core_kernels.gram(RELU3_CORE, XT, X)["nngp"]
    kss = np.diagonal(core_kernels.gram(RELU3_CORE, XT)["nngp"])
    expected = kss - np.einsum("ij,ij->i", kt @ np.linalg.inv(k + 0.01 * np.eye(12)), kt)
    np.testing.assert_allclose(out["variance"], expected, rtol=1e-6, atol=1e-10)


async def test_ntk_ensemble_variance(client: httpx.AsyncClient) -> None:
    model = await create(client)
    prior = (await client.post(f"/v1/models/{model['id']}/predictions",
                               json={"x_test": XT.tolist(), "variance": True, "time": 0.0})).json()
    kss = np.diagonal(core_kernels.gram(RELU3_CORE, XT)["nngp"])
    np.testing.assert_allclose(prior["variance"], kss, rtol=1e-10)
    np.testing.assert_allclose(prior["mean"], 0.0, atol=1e-12)
    trained = (await client.post(f"/v1/models/{model['id']}/predictions",
                                 json={"x_test": XT.tolist(), "variance": True})).json()
    assert all(v >= 0 for v in trained["variance"])


async def test_model_survives_restart_without_refactoring(settings, monkeypatch) -> None:
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        model = await create(c)
        first = (await c.post(f"/v1/models/{model['id']}/trajectory", json={"times": [1.0, 2.0]})).json()
    calls = {"eigh": 0, "cho_factor": 0}
    real_eigh, real_cho = np.linalg.eigh, scipy.linalg.cho_factor

    def count(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(np.linalg, "eigh", count("eigh", real_eigh))
    monkeypatch.setattr(scipy.linalg, "cho_factor", count("cho_factor", real_cho))
    restarted = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://t") as c:
        again = (await c.post(f"/v1/models/{model['id']}/trajectory", json={"times": [1.0, 2.0]})).json()
        pred = await c.post(f"/v1/models/{model['id']}/predictions", json={"x_test": XT.tolist(), "time": 3.0})
    assert again == first and pred.status_code == 200
    assert calls == {"eigh": 0, "cho_factor": 0}


async def test_singular_system_needs_ridge(client: httpx.AsyncClient) -> None:
    x = np.vstack([X, X[:2]])
    y = np.concatenate([Y, Y[:2]])
    response = await client.post("/v1/models", json={"kernel": NETWORK, "x_train": x.tolist(), "y_train": y.tolist()})
    body = assert_problem(response, 422)
    assert "ridge" in body["detail"] and body["errors"][0]["loc"] == ["body", "ridge"]


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/models", {"y_train": Y[:5].tolist()}, "y_train has 5 rows but x_train has 12"),
        ("/v1/models", {"which": "kernel"}, "'kernel' is not a matrix of this kernel"),
        ("/v1/models", {"ridge": -1}, "greater than or equal to 0"),
        ("/v1/trajectories", {"times": [0.5], "method": "gd"}, "0.5 is not an integer"),
        ("/v1/trajectories", {"times": [1], "y_test": [1.0]}, "y_test needs x_test"),
        ("/v1/trajectories", {"times": [1], "x_test": [[1.0]]}, "x_test has 1 features but x_train has 3"),
        ("/v1/trajectories", {"times": []}, "at least 1"),
    ],
)
async def test_invalid_learning_requests(client: httpx.AsyncClient, path: str, body: dict, fragment: str) -> None:
    full = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist()} | body
    assert fragment in assert_problem(await client.post(path, json=full), 422)["detail"]


async def test_divergent_gd_is_reported(client: httpx.AsyncClient) -> None:
    body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist(), "method": "gd",
            "times": [100000], "learning_rate": 1e6}
    assert "max_stable_learning_rate" in assert_problem(await client.post("/v1/trajectories", json=body), 422)["detail"]


async def test_training_set_limit(settings) -> None:
    app = create_app(settings.model_copy(update={"max_train_size": 5}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/models", json={"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist()})
    assert "NTK_MAX_TRAIN_SIZE" in assert_problem(response, 413)["detail"]


async def test_model_idempotency_and_ownership(settings) -> None:
    app = create_app(settings.model_copy(update={"api_keys": ("a", "b")}))
    body = {"kernel": NETWORK, "x_train": X.tolist(), "y_train": Y.tolist(), "ridge": 0.1}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        a = {"Authorization": "Bearer a", "Idempotency-Key": "fit-1"}
        first = await c.post("/v1/models", json=body, headers=a)
        again = await c.post("/v1/models", json=body, headers=a)
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
        other = await c.post("/v1/models", json=body | {"ridge": 0.2}, headers=a)
        assert_problem(other, 422)
        assert len((await c.get("/v1/models", headers=a)).json()["items"]) == 1
        assert_problem(await c.get(f"/v1/models/{first.json()['id']}", headers={"Authorization": "Bearer b"}), 404)


async def test_spectra(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/spectra", json={"kernel": NETWORK, "which": "nngp", "x": X.tolist()})
    out = response.json()
    k = core_kernels.gram(RELU3_CORE, X)["nngp"]
    lam = np.sort(np.linalg.eigvalsh(k))[::-1]
    np.testing.assert_allclose(out["eigenvalues"], lam, rtol=1e-8, atol=1e-12)
    assert out["trace"] == pytest.approx(np.trace(k)) and out["min_eigenvalue"] == pytest.approx(lam[-1], abs=1e-12)
    assert out["condition_number"] == pytest.approx(lam[0] / lam[-1], rel=1e-6)
    top = (await client.post("/v1/spectra", json={"kernel": NETWORK, "x": X.tolist(), "top_k": 3})).json()
    assert len(top["eigenvalues"]) == 3
    singular = (await client.post("/v1/spectra", json={"kernel": {"type": "linear"}, "x": X.tolist()})).json()
    assert singular["condition_number"] is None and singular["min_eigenvalue"] == 0.0
