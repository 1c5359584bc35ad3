"""Every HTTP operation the client uses, declared once: method, path, request fields, response fields.

The transport refuses to send a field an operation does not declare, and
``tests/client/test_operations.py`` checks each declaration against the service's OpenAPI document
(``openapi/openapi.json``), so the client cannot drift from the API.
"""

from __future__ import annotations

from dataclasses import dataclass

JSON = "application/json"
NPY = "application/x-npy"


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of the API as the client uses it.

    ``body``: JSON request fields the client may send; ``variant``: the value of ``type`` that
    selects the request schema of a discriminated body (jobs); ``query``/``headers``: parameters; ``content``: the request media type;
    ``accept``: response media types read; ``reads``: response fields read (dotted for nested
    objects); ``creates``: sends an ``Idempotency-Key`` (retries are then safe); ``retry_safe``:
    the request may be repeated after a dropped connection.
    """

    method: str
    path: str
    status: int = 200
    body: frozenset[str] = frozenset()
    variant: str | None = None
    query: frozenset[str] = frozenset()
    headers: frozenset[str] = frozenset()
    content: str | None = None
    accept: tuple[str, ...] = (JSON,)
    reads: frozenset[str] = frozenset()
    creates: bool = False
    retry_safe: bool = True


def _f(*names: str) -> frozenset[str]:
    return frozenset(names)


PAGE = _f("limit", "page_token")
LIST_READS = _f("items", "next_page_token")
DATASET_READS = _f("id", "name", "shape", "dtype", "sha256", "bytes", "created_at")
MODEL_READS = _f("id", "n_train", "n_outputs", "kernel", "which", "ridge", "ridge_mode", "train_residual_norm",
                 "condition_number", "solver", "created_at")
JOB_READS = _f("id", "type", "status", "progress", "created_at", "started_at", "finished_at", "error", "links")
TRAJECTORY_READS = _f("times", "train_loss", "train_predictions", "test_predictions", "test_loss", "eigenvalues",
                      "max_stable_learning_rate")
KERNEL_PROBLEM = _f("kernel", "which", "x_train", "y_train", "ridge", "ridge_mode")
TRAJECTORY_OPTIONS = _f("times", "learning_rate", "method", "x_test", "y_test", "loss_normalization")
#: api-v1.md "Training sets beyond one machine's memory": how a fit / a trajectory job is solved.
FIT_SOLVER = _f("solver", "tol", "max_iter", "centers", "seed")
TRAJECTORY_SOLVER = _f("solver", "tol", "max_iter", "include")
IDEMPOTENCY = _f("Idempotency-Key")

OPERATIONS: dict[str, Operation] = {
    "computeKernels": Operation(
        "POST", "/v1/kernels", body=_f("kernel", "x1", "x2", "outputs", "dtype"), content=JSON, accept=(JSON, NPY),
        reads=_f("shape", "dtype", "results")),
    "computeEmpiricalKernels": Operation(
        "POST", "/v1/empirical-kernels", body=_f("kernel", "width", "seed", "x1", "x2", "outputs", "dtype"),
        content=JSON, reads=_f("shape", "dtype", "results", "relative_error_to_infinite")),
    "createModel": Operation(
        "POST", "/v1/models", 201, body=KERNEL_PROBLEM | FIT_SOLVER, headers=IDEMPOTENCY, content=JSON,
        reads=MODEL_READS, creates=True),
    "listModels": Operation("GET", "/v1/models", query=PAGE, reads=LIST_READS),
    "getModel": Operation("GET", "/v1/models/{model_id}", reads=MODEL_READS),
    "deleteModel": Operation("DELETE", "/v1/models/{model_id}", 204, accept=()),
    "predictWithModel": Operation(
        "POST", "/v1/models/{model_id}/predictions",
        body=_f("x_test", "time", "variance", "learning_rate", "loss_normalization"), content=JSON,
        reads=_f("mean", "variance")),
    "modelTrajectory": Operation(
        "POST", "/v1/models/{model_id}/trajectory", body=TRAJECTORY_OPTIONS, content=JSON, reads=TRAJECTORY_READS),
    "computeTrajectory": Operation(
        "POST", "/v1/trajectories", body=KERNEL_PROBLEM | TRAJECTORY_OPTIONS, content=JSON, reads=TRAJECTORY_READS),
    "computeSpectrum": Operation(
        "POST", "/v1/spectra", body=_f("kernel", "which", "x", "top_k"), content=JSON,
        reads=_f("eigenvalues", "condition_number", "min_eigenvalue", "trace")),
    "lazyTraining": Operation(
        "POST", "/v1/experiments/lazy-training",
        body=_f("kernel", "width", "seed", "x_train", "y_train", "steps", "learning_rate", "x_test", "y_test",
                "loss_normalization", "dtype"),
        content=JSON,
        reads=_f("steps", "width", "seed", "parameter_count", "gap_train", "gap_test", "max_stable_learning_rate",
                 "network.train_loss", "network.test_predictions", "network.test_loss",
                 "network.relative_parameter_change", "network.relative_kernel_change",
                 "ntk.initial_function", "ntk.train_loss", "ntk.test_predictions", "ntk.test_loss",
                 "ntk_from_network_init.initial_function", "ntk_from_network_init.train_loss",
                 "ntk_from_network_init.test_predictions", "ntk_from_network_init.test_loss")),
    "createDataset": Operation(
        "POST", "/v1/datasets", 201, query=_f("name"), headers=IDEMPOTENCY, content=NPY, reads=DATASET_READS,
        creates=True),
    "listDatasets": Operation("GET", "/v1/datasets", query=PAGE, reads=LIST_READS),
    "getDataset": Operation("GET", "/v1/datasets/{dataset_id}", reads=DATASET_READS),
    "deleteDataset": Operation("DELETE", "/v1/datasets/{dataset_id}", 204, accept=()),
    "createGramJob": Operation(
        "POST", "/v1/jobs", 202, variant="gram", body=_f("type", "kernel", "x1", "x2", "outputs", "dtype", "device"),
        headers=IDEMPOTENCY, content=JSON, reads=JOB_READS, creates=True),
    "createFitJob": Operation(
        "POST", "/v1/jobs", 202, variant="fit", body=KERNEL_PROBLEM | FIT_SOLVER | _f("type", "device"),
        headers=IDEMPOTENCY, content=JSON, reads=JOB_READS, creates=True),
    "createTrajectoryJob": Operation(
        "POST", "/v1/jobs", 202, variant="trajectory", body=KERNEL_PROBLEM | TRAJECTORY_OPTIONS | TRAJECTORY_SOLVER | _f("type", "device"),
        headers=IDEMPOTENCY, content=JSON, reads=JOB_READS, creates=True),
    "listJobs": Operation("GET", "/v1/jobs", query=PAGE | _f("status"), reads=LIST_READS),
    "getJob": Operation("GET", "/v1/jobs/{job_id}", reads=JOB_READS),
    "cancelJob": Operation("POST", "/v1/jobs/{job_id}/cancel", 202, reads=JOB_READS, retry_safe=False),
    "deleteJob": Operation("DELETE", "/v1/jobs/{job_id}", 204, accept=(), retry_safe=False),
    "getJobResult": Operation(
        "GET", "/v1/jobs/{job_id}/result", query=_f("rows", "output"), headers=_f("Range", "If-Range"),
        accept=(NPY, JSON)),
}
