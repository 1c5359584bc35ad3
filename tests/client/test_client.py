"""Every public method of ``ntk_client`` against a real uvicorn (``conftest.server_url``).

References are independent of the client: ``core`` in this process for the Gram matrices
(the client must reproduce them within 1e-12 through JSON, ``.npy``, datasets and jobs), and
direct NumPy/SciPy linear algebra (solve, matrix exponential, matrix power, eigvalsh) for fits,
predictions, trajectories and spectra.
"""

from __future__ import annotations

import io
import json

import httpx
import matplotlib
import numpy as np
import pytest
import scipy.linalg

from core import empirical as core_empirical
from core import kernels as core_kernels
from core.kernels.registry import layer_from_json
from core.kernels.spec import RBF, Network
from ntk_client import Client, Dataset, JobFailed, ProblemError, kernels, stax

matplotlib.use("Agg")

RNG = np.random.default_rng(12)
X1 = RNG.normal(size=(9, 5))
X2 = RNG.normal(size=(7, 5))
Y = np.sin(X1 @ RNG.normal(size=5))
X_TEST = RNG.normal(size=(4, 5))
Y_TEST = np.sin(X_TEST @ RNG.normal(size=5))
RELU = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(512, W_std=1.5, b_std=0.05),
                   stax.Relu(), stax.Dense(1))
RBF_KERNEL = kernels.rbf(lengthscale=1.5)


class Recorder(httpx.HTTPTransport):
    """The real transport, remembering every request sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return super().handle_request(request)

    def bodies(self, path: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path and r.method == "POST"]


def core_spec(spec: stax.Network) -> Network:
    doc = spec.to_json()
    return Network(tuple(layer_from_json(layer) for layer in doc["layers"]), doc["parameterization"])


def assert_close(actual: np.ndarray, expected: np.ndarray, tol: float = 1e-12) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


# ---------------------------------------------------------------------------------- kernel_fn
def test_kernel_fn_equals_core_through_json_and_npy(server_url: str) -> None:
    recorder = Recorder()
    with Client(server_url, transport=recorder) as client:
        kernel_fn = client.kernel_fn(RELU)
        k = kernel_fn(X1, X2, ("nngp", "ntk"))
        ntk = kernel_fn(X1, None, "ntk")
        everything = kernel_fn(X1)
    expected = core_kernels.gram(core_spec(RELU), X1, X2)
    assert_close(k.nngp, expected["nngp"])
    assert_close(k.ntk, expected["ntk"])
    assert_close(ntk, core_kernels.gram(core_spec(RELU), X1, outputs=["ntk"])["ntk"])
    assert everything._fields == ("nngp", "ntk")
    assert_close(everything.nngp, core_kernels.gram(core_spec(RELU), X1)["nngp"])
    accepts = [r.headers["accept"] for r in recorder.requests if r.url.path == "/v1/kernels"]
    assert accepts == ["application/json", "application/x-npy", "application/json"]  # one matrix: .npy
    assert recorder.bodies("/v1/kernels")[0]["kernel"] == RELU.to_json()


def test_several_large_matrices_of_a_fully_connected_kernel_come_as_npy(server_url: str) -> None:
    recorder = Recorder()
    images = RNG.normal(size=(3, 4, 4, 2))
    cnn = stax.serial(stax.Conv(4, (3, 3)), stax.Relu(), stax.Flatten(), stax.Dense(1))
    with Client(server_url, transport=recorder, npy_split_entries=1) as client:
        k = client.kernel_fn(RELU)(X1, X2)
        c = client.kernel_fn(cnn)(images, None, ("ntk", "nngp"))
    sent = [(r.headers["accept"], json.loads(r.content).get("outputs")) for r in recorder.requests]
    assert sent == [("application/x-npy", ["nngp"]), ("application/x-npy", ["ntk"]),  # one request per matrix
                    ("application/json", ["ntk", "nngp"])]  # a convolutional kernel is computed once
    expected = core_kernels.gram(core_spec(RELU), X1, X2)
    assert k._fields == ("nngp", "ntk")
    assert_close(k.nngp, expected["nngp"])
    assert_close(k.ntk, expected["ntk"])
    assert_close(c.nngp, core_kernels.gram(core_spec(cnn), images)["nngp"])


def test_kernel_fn_on_convolutional_residual_and_classic_kernels(client: Client) -> None:
    images = RNG.normal(size=(5, 6, 6, 2))
    cnn = stax.serial(stax.Conv(8, (3, 3), padding="SAME", W_std=1.4, b_std=0.1), stax.Relu(),
                      stax.AvgPool((2, 2)), stax.Conv(8, (2, 2)), stax.FanOut(2),
                      stax.parallel(stax.serial(stax.Relu(), stax.Conv(8, (1, 1))), stax.Identity()),
                      stax.FanInSum(), stax.LayerNorm(), stax.Erf(), stax.GlobalAvgPool(), stax.Dense(1))
    k = client.kernel_fn(cnn)(images, None, ("ntk", "nngp"))
    expected = core_kernels.gram(core_spec(cnn), images)
    assert_close(k.ntk, expected["ntk"])
    assert_close(k.nngp, expected["nngp"])
    rbf = client.kernel_fn(RBF_KERNEL)(X1, X2, "kernel")
    assert_close(rbf, core_kernels.gram(RBF(1.5), X1, X2)["kernel"])
    two = client.kernel_fn(kernels.two_layer_relu())(X1, X2)
    assert two._fields == ("ntk", "ntk_a", "ntk_b", "nngp")
    assert_close(two.ntk, two.ntk_a + two.ntk_b)


def test_large_inputs_go_as_datasets_once(server_url: str) -> None:
    recorder = Recorder()
    with Client(server_url, transport=recorder, upload_threshold_bytes=0) as client:
        kernel_fn = client.kernel_fn(RELU)
        first = kernel_fn(X1, X2, "ntk")
        again = kernel_fn(X1, X2, "nngp")
    uploads = [r for r in recorder.requests if r.url.path == "/v1/datasets"]
    assert len(uploads) == 2 and {r.headers["content-type"] for r in uploads} == {"application/x-npy"}
    bodies = recorder.bodies("/v1/kernels")
    assert all(body["x1"].startswith("ds_") and body["x2"].startswith("ds_") for body in bodies)
    expected = core_kernels.gram(core_spec(RELU), X1, X2)
    assert_close(first, expected["ntk"])
    assert_close(again, expected["nngp"])


def test_large_grams_go_to_jobs_with_a_progress_bar(client: Client) -> None:
    x = RNG.normal(size=(80, 5))  # 80 × 80 × 2 entries: over the server's max_result_entries (5000)
    bar = io.StringIO()
    k = client.kernel_fn(RELU, mode="auto", progress={"file": bar})(x, None, ("ntk", "nngp"))  # 413 → a job
    expected = core_kernels.gram(core_spec(RELU), x)
    assert_close(k.ntk, expected["ntk"])
    assert_close(k.nngp, expected["nngp"])
    assert "100%" in bar.getvalue()
    with pytest.raises(ProblemError) as refused:
        client.kernel_fn(RELU, mode="sync")(x, None, "ntk")
    assert refused.value.status == 413 and "NTK_MAX_RESULT_ENTRIES" in refused.value.detail
    forced = client.kernel_fn(RBF_KERNEL, mode="job")(X1, X2, "kernel")
    assert_close(forced, core_kernels.gram(RBF(1.5), X1, X2)["kernel"])
    assert client.jobs(status="running") == []  # automatic jobs are removed once downloaded


def test_empirical_kernel(client: Client) -> None:
    spec = stax.serial(stax.Dense(64, W_std=1.2, b_std=0.1), stax.Relu(), stax.Dense(1))
    emp = client.empirical_kernel(spec, X1, X2, width=64, seed=3, get=("ntk", "nngp"))
    finite = core_empirical.empirical_kernels(core_spec(spec), X1, X2, width=64, seed=3, outputs=["ntk", "nngp"])
    limit = core_kernels.gram(core_kernels.layer_widths_applied(core_spec(spec), 64), X1, X2)
    for name in ("ntk", "nngp"):
        assert_close(emp[name], finite[name])
        relative = np.linalg.norm(finite[name] - limit[name]) / np.linalg.norm(limit[name])
        assert emp.relative_error_to_infinite[name] == pytest.approx(relative, rel=1e-9)
    assert_close(emp.ntk, finite["ntk"])
    with pytest.raises(AttributeError, match="no 'ntk_a' matrix"):
        _ = emp.ntk_a


# ---------------------------------------------------------------------------------- learning
def test_fit_predict_and_models(client: Client) -> None:
    ridge = 1e-3
    model = client.fit(RBF_KERNEL, X1, Y, ridge=ridge)
    gram = core_kernels.gram(RBF(1.5), X1)["kernel"]
    cross = core_kernels.gram(RBF(1.5), X_TEST, X1)["kernel"]
    system = gram + ridge * np.eye(len(X1))
    pred = model.predict(X_TEST, variance=True)
    assert_close(pred.mean[:, 0], cross @ np.linalg.solve(system, Y), 1e-9)
    prior = np.ones(len(X_TEST))  # rbf: k(x, x) = 1
    posterior = prior - np.einsum("ij,ji->i", cross, np.linalg.solve(system, cross.T))
    assert_close(pred.variance, posterior, 1e-9)
    assert model.n_train == len(X1) and model.n_outputs == 1 and model.which == "kernel"
    assert client.model(model.id).document == model.document
    assert model.refresh().ridge == ridge
    assert model.id in [m.id for m in client.models()]
    relative = client.fit(RBF_KERNEL, X1, np.stack([Y, -Y], axis=1), ridge=0.1, ridge_mode="relative")
    shift = 0.1 * np.trace(gram) / len(X1)
    assert_close(relative.predict(X_TEST).mean[:, 1], -cross @ np.linalg.solve(gram + shift * np.eye(len(X1)), Y),
                 1e-9)
    model.delete()
    relative.delete()
    with pytest.raises(ProblemError) as gone:
        client.model(model.id)
    assert gone.value.status == 404


def test_trajectories_follow_the_matrix_exponential(client: Client) -> None:
    times = [0.0, 0.5, 3.0]
    n = len(X1)
    gram = core_kernels.gram(RBF(1.5), X1)["kernel"]
    cross = core_kernels.gram(RBF(1.5), X_TEST, X1)["kernel"]
    lr = 0.7

    def flow(t: float) -> np.ndarray:  # α(t) = K⁻¹(I − e^{−ηKt/N}) y, N = n
        return np.linalg.solve(gram, Y - scipy.linalg.expm(-lr * gram * t / n) @ Y)

    traj = client.trajectory(RBF_KERNEL, X1, Y, times, learning_rate=lr, x_test=X_TEST, y_test=Y_TEST)
    assert traj.train_predictions.shape == (3, n, 1) and traj.test_predictions.shape == (3, len(X_TEST), 1)
    for i, t in enumerate(times):
        alpha = flow(t)
        assert_close(traj.train_predictions[i, :, 0], gram @ alpha, 1e-8)
        assert_close(traj.test_predictions[i, :, 0], cross @ alpha, 1e-7)
        assert traj.train_loss[i] == pytest.approx(np.sum((gram @ alpha - Y) ** 2) / (2 * n), rel=1e-8, abs=1e-14)
        assert traj.test_loss[i] == pytest.approx(np.sum((cross @ alpha - Y_TEST) ** 2) / (2 * len(X_TEST)),
                                                  rel=1e-7)
    assert_close(traj.eigenvalues, np.linalg.eigvalsh(gram)[::-1], 1e-9)
    assert traj.max_stable_learning_rate == pytest.approx(2 * n / np.linalg.eigvalsh(gram).max(), rel=1e-9)

    model = client.fit(RBF_KERNEL, X1, Y)
    steps = [0, 1, 10]
    gd = model.trajectory(steps, learning_rate=lr, method="gd")
    step = np.eye(n) - lr * gram / n
    for i, s in enumerate(steps):  # f_s = (I − (I − ηK/N)^s) y
        assert_close(gd.train_predictions[i, :, 0], Y - np.linalg.matrix_power(step, s) @ Y, 1e-9)
    assert gd.method == "gd"
    ax = traj.plot()
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "training time t"
    assert gd.plot().get_xlabel() == "gradient-descent step"


def test_spectrum(client: Client) -> None:
    spectrum = client.spectrum(RELU, X1, which="nngp", top_k=np.int64(4))  # NumPy scalars are fine anywhere
    reference = np.linalg.eigvalsh(core_kernels.gram(core_spec(RELU), X1)["nngp"])[::-1]
    assert_close(spectrum.eigenvalues, reference[:4], 1e-9)
    full = client.spectrum(RELU, X1)
    ntk_eigs = np.linalg.eigvalsh(core_kernels.gram(core_spec(RELU), X1)["ntk"])
    assert full.trace == pytest.approx(ntk_eigs.sum(), rel=1e-9)
    assert full.min_eigenvalue == pytest.approx(ntk_eigs.min(), rel=1e-6)
    assert full.condition_number == pytest.approx(ntk_eigs.max() / ntk_eigs.min(), rel=1e-6)
    assert len(full.plot().get_lines()) == 1


def test_lazy_training(client: Client) -> None:
    spec = stax.serial(stax.Dense(32, W_std=1.4), stax.Relu(), stax.Dense(1))
    lazy = client.lazy_training(spec, X1, Y, X_TEST, y_test=Y_TEST, width=np.int64(32), steps=np.array([0, 5, 20]),
                                seed=1, learning_rate=np.float32(0.5))
    assert lazy.steps.tolist() == [0, 5, 20] and lazy.width == 32 and lazy.seed == 1
    assert lazy.parameter_count == 5 * 32 + 32
    assert lazy.network.relative_parameter_change[0] == 0 and lazy.network.relative_parameter_change[-1] > 0
    assert lazy.network.test_predictions.shape == (3, len(X_TEST))
    assert lazy.ntk.initial_function == "zero" and lazy.ntk_from_network_init.initial_function == "network"
    assert lazy.gap_train.shape == (3,) and lazy.gap_test.shape == (3,)
    assert len(lazy.plot().get_lines()) == 3
    assert len(lazy.plot(kind="change").get_lines()) == 2
    with pytest.raises(ValueError, match="kind"):
        lazy.plot(kind="weights")


# ---------------------------------------------------------------------------------- datasets and jobs
def test_datasets(client: Client) -> None:
    ds = client.upload(X1.astype(np.float32), name="features")
    assert isinstance(ds, Dataset) and ds.shape == (9, 5) and ds.dtype == "float32" and ds.name == "features"
    assert client.dataset(ds.id) == ds
    assert ds.id in [d.id for d in client.datasets()]
    assert len(client.datasets(limit=1)) == 1
    k = client.kernel_fn(RBF_KERNEL)(ds, ds.id, "kernel")  # a Dataset or its id as input
    assert_close(k, core_kernels.gram(RBF(1.5), X1.astype(np.float32).astype(np.float64))["kernel"])
    client.delete_dataset(ds)
    with pytest.raises(ProblemError) as gone:
        client.dataset(ds.id)
    assert gone.value.status == 404 and gone.value.request_id


def test_gram_job_progress_result_rows_download_cancel_delete(client: Client, tmp_path) -> None:
    x = RNG.normal(size=(64, 5))
    job = client.gram_job(RELU, x, get=("nngp", "ntk"))
    bar = io.StringIO()
    assert job.wait(progress={"file": bar}) is job and job.status == "succeeded" and job.progress == 1.0
    assert "100%" in bar.getvalue() and job.id in bar.getvalue()
    expected = core_kernels.gram(core_spec(RELU), x)
    assert_close(job.result(), expected["nngp"])  # the first output
    assert_close(job.result(output="ntk"), expected["ntk"])
    assert_close(job.result(output="ntk", rows=(10, 30)), expected["ntk"][10:30])
    size = job.download(tmp_path / "ntk.npy", output="ntk")
    assert size == (tmp_path / "ntk.npy").stat().st_size
    assert_close(np.load(tmp_path / "ntk.npy"), expected["ntk"])
    assert job.id in [j.id for j in client.jobs(status="succeeded")]
    assert client.job(job.id).status == "succeeded" and "succeeded" in repr(job)
    with pytest.raises(ProblemError) as finished:
        job.cancel()
    assert finished.value.status == 409
    job.delete()
    with pytest.raises(ProblemError) as gone:
        job.refresh()
    assert gone.value.status == 404


def test_cancelled_job_raises_job_failed(client: Client) -> None:
    x = RNG.normal(size=(400, 5))
    job = client.gram_job(RELU, x, get="ntk")
    try:
        job.cancel()
    except ProblemError as exc:  # it may have finished already on a fast machine
        assert exc.status == 409
        pytest.skip("the job finished before it could be cancelled")
    with pytest.raises(JobFailed) as failed:
        job.wait(timeout=60)
    assert failed.value.job["status"] == "cancelled"
    job.delete()


def test_fit_and_trajectory_jobs(client: Client) -> None:
    sync = client.fit(RBF_KERNEL, X1, Y, ridge=1e-2)
    by_job = client.fit(RBF_KERNEL, X1, Y, ridge=1e-2, job=True)
    assert by_job.id != sync.id and by_job.n_train == len(X1)
    assert_close(by_job.predict(X_TEST).mean, sync.predict(X_TEST).mean, 1e-12)
    fit_job = client.fit_job(RBF_KERNEL, X1, Y, ridge=1e-2)
    assert fit_job.wait(timeout=60).model().n_train == len(X1)

    times = [0.0, 1.0, 4.0]
    direct = client.trajectory(RBF_KERNEL, X1, Y, times, x_test=X_TEST, y_test=Y_TEST, ridge=1e-2)
    queued = client.trajectory(RBF_KERNEL, X1, Y, times, x_test=X_TEST, y_test=Y_TEST, ridge=1e-2, job=True)
    assert_close(queued.train_predictions, direct.train_predictions, 1e-12)
    assert_close(queued.test_loss, direct.test_loss, 1e-12)
    traj_job = client.trajectory_job(RBF_KERNEL, X1, Y, [0, 3], method="gd", learning_rate=0.5)
    assert traj_job.wait(timeout=60).result().method == "gd"
    with pytest.raises(TypeError):
        traj_job.model()


def test_large_training_set_solvers(client: Client) -> None:
    """cg and nystrom fits (all centers) equal the direct solve; a krylov trajectory job with the arrays
    left out of the JSON serves them as .npy, equal to the matrix exponential."""
    gram = core_kernels.gram(RBF(lengthscale=1.5), X1, outputs=["kernel"])["kernel"]
    alpha = np.linalg.solve(gram + 1e-2 * np.eye(len(X1)), Y)
    expected = core_kernels.gram(RBF(lengthscale=1.5), X_TEST, X1, outputs=["kernel"])["kernel"] @ alpha
    for options in ({"solver": "cg", "tol": 1e-12}, {"solver": "nystrom", "centers": len(X1), "tol": 1e-12}):
        model = client.fit(RBF_KERNEL, X1, Y, ridge=1e-2, **options)
        assert model.document["solver"]["type"] == options["solver"]
        assert_close(model.predict(X_TEST).mean[:, 0], expected, 1e-8)
        model.delete()
    times = [0.0, 0.5, 3.0]
    job = client.trajectory_job(RBF_KERNEL, X1, Y, times, solver="krylov", tol=1e-12, include=[], x_test=X_TEST)
    result = job.wait(timeout=120).result()
    assert result.train_predictions is None and result.solver["type"] == "krylov"
    train = job.result(output="train_predictions")
    for t, predictions in zip(times, train):
        flow = gram @ np.linalg.solve(gram, (np.eye(len(X1)) - scipy.linalg.expm(-gram * t / len(X1))) @ Y)
        assert_close(predictions[:, 0], flow, 1e-8)
    job.delete()


def test_problem_errors_name_the_field(client: Client) -> None:
    with pytest.raises(ProblemError) as bad:
        client.kernel_fn({"type": "rbf", "lengthscale": -1.0})(X1, None, "kernel")
    error = bad.value
    assert error.status == 422 and error.errors and "lengthscale" in json.dumps(error.errors)
    assert "422" in str(error) and error.document["status"] == 422
    with pytest.raises(ProblemError) as mismatch:
        client.kernel_fn(RELU)(X1, RNG.normal(size=(3, 4)), "ntk")
    assert mismatch.value.status == 422
    with pytest.raises(ValueError, match="get must name"):
        client.kernel_fn(RELU)(X1, None, ())
    with pytest.raises(ValueError, match="mode"):
        client.kernel_fn(RELU, mode="fast")
