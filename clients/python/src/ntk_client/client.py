"""The client: neural-tangents' ``kernel_fn`` and the rest of the service, as NumPy in, NumPy out.

Arrays travel as ``.npy`` wherever the API allows: an input larger than ``upload_threshold_bytes``
is uploaded once as a dataset (cached by content for the client's life) and named by its id, and a
single requested matrix comes back as ``.npy`` — and so does each of several matrices of a fully
connected kernel with at least ``npy_split_entries`` entries, one request per matrix (recomputing
such a kernel costs less than parsing its JSON; convolutional kernels come back as one JSON
answer, parsed with ``orjson`` when it is installed). Gram matrices with more than
``job_threshold_entries`` entries (or any that the service refuses synchronously with ``413``)
are computed by a job, waited for and downloaded (resumable); ``mode="job"``/``"sync"`` forces
one way. Every error answer raises :class:`~ntk_client.errors.ProblemError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from ntk_client.errors import ProblemError
from ntk_client.jobs import Job
from ntk_client.kernels import fully_connected, outputs_of
from ntk_client.kernels import to_json as kernel_json
from ntk_client.npy import NPY_MEDIA_TYPE, as_float_array, from_npy, to_npy
from ntk_client.results import (
    Dataset,
    EmpiricalKernel,
    LazyTraining,
    Prediction,
    Spectrum,
    Trajectory,
    kernel_tuple,
)
from ntk_client.stax import Layer
from ntk_client.transport import Session, loads

Spec = Layer | dict[str, Any]
ArrayLike = Any  # a NumPy array (or nested lists), a Dataset, or a dataset id "ds_…"
Progress = bool | Mapping[str, Any]
MODES = ("auto", "sync", "job")


def _names(get: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if get is None:
        return None
    names = (get,) if isinstance(get, str) else tuple(get)
    if not names:
        raise ValueError("get must name at least one matrix, e.g. 'ntk' or ('nngp', 'ntk')")
    return names


class KernelFn:
    """``kernel_fn(x1, x2=None, get=None, dtype="float64")`` as in neural-tangents, computed by the service.

    ``get`` a string: that matrix as a NumPy array; a tuple (or ``None``: every matrix the kernel
    yields): a ``Kernel`` named tuple (``k.nngp``, ``k.ntk``). Inputs are ``n × d`` (or
    ``n × L × C`` / ``n × H × W × C`` for convolutional networks) arrays, datasets or dataset ids.
    """

    def __init__(self, client: Client, spec: Spec, mode: str, progress: Progress) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        self.client = client
        self.kernel = kernel_json(spec)
        self.mode = mode
        self.progress = progress

    def __call__(self, x1: ArrayLike, x2: ArrayLike | None = None, get: str | Sequence[str] | None = None,
                 dtype: str = "float64") -> Any:
        results = self.client._gram(self.kernel, x1, x2, _names(get), dtype, self.mode, self.progress)
        return results[get] if isinstance(get, str) else kernel_tuple(results)


class Model:
    """A fitted kernel-regression model (``/v1/models/{id}``); ``document`` is its JSON description."""

    def __init__(self, client: Client, document: dict[str, Any]) -> None:
        self._client = client
        self.document = document

    def __repr__(self) -> str:
        return f"Model(id={self.id!r}, n_train={self.n_train}, n_outputs={self.n_outputs}, which={self.which!r})"

    id = property(lambda self: self.document["id"])
    n_train = property(lambda self: int(self.document["n_train"]))
    n_outputs = property(lambda self: int(self.document["n_outputs"]))
    kernel = property(lambda self: self.document["kernel"])
    which = property(lambda self: self.document["which"])
    ridge = property(lambda self: float(self.document["ridge"]))
    condition_number = property(lambda self: self.document["condition_number"])

    def predict(self, x_test: ArrayLike, time: float | None = None, variance: bool = False,
                learning_rate: float = 1.0, loss_normalization: str = "mean") -> Prediction:
        """Mean (``n_test × k``) after training for ``time`` (``None``: t = ∞, kernel regression), and the
        posterior/ensemble variance per test point when ``variance``."""
        c = self._client
        doc = c._session.json("predictWithModel", path={"model_id": self.id}, json_body={
            "x_test": c._array(x_test, "x_test"), "time": time, "variance": variance,
            "learning_rate": learning_rate, "loss_normalization": loss_normalization})
        return Prediction(np.asarray(doc["mean"], dtype=np.float64),
                          None if doc["variance"] is None else np.asarray(doc["variance"], dtype=np.float64))

    def trajectory(self, times: Sequence[float], learning_rate: float = 1.0, method: str = "flow",
                   x_test: ArrayLike | None = None, y_test: ArrayLike | None = None,
                   loss_normalization: str = "mean") -> Trajectory:
        """The linearized network's training trajectory on this model's data (``POST …/trajectory``)."""
        c = self._client
        doc = c._session.json("modelTrajectory", path={"model_id": self.id}, json_body={
            "times": [float(t) for t in times], "learning_rate": learning_rate, "method": method,
            "x_test": c._array(x_test, "x_test"), "y_test": c._array(y_test, "y_test"),
            "loss_normalization": loss_normalization})
        return Trajectory.from_document(doc, method)

    def refresh(self) -> Model:
        self.document = self._client._session.json("getModel", path={"model_id": self.id})
        return self

    def delete(self) -> None:
        self._client.delete_model(self.id)


class Client:
    """The NTK service at ``base_url``. Also a context manager (``close()`` on exit).

    ``api_key``: sent as ``Authorization: Bearer``. ``timeout``: seconds per HTTP request.
    ``max_retries``: retries of one call after ``503``/dropped connections (waits of at most
    ``max_backoff`` s, ``Retry-After`` honoured). ``upload_threshold_bytes``: larger inputs go as
    datasets. ``job_threshold_entries``: larger Grams (entries × matrices) go to a job in
    ``mode="auto"``. ``npy_split_entries``: from this many entries per matrix, several matrices of a
    fully connected kernel are fetched as ``.npy`` one by one. ``transport``: an ``httpx`` transport
    (tests, proxies).
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, *, max_backoff: float = 30.0, upload_threshold_bytes: int = 1 << 20,
                 job_threshold_entries: int = 10_000_000, npy_split_entries: int = 65_536,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._session = Session(base_url, api_key=api_key, timeout=timeout, max_retries=max_retries,
                                max_backoff=max_backoff, transport=transport)
        self.upload_threshold_bytes = int(upload_threshold_bytes)
        self.job_threshold_entries = int(job_threshold_entries)
        self.npy_split_entries = int(npy_split_entries)
        self._uploaded: dict[str, str] = {}  # sha256 of the .npy bytes -> dataset id (automatic uploads)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ arrays
    def _array(self, value: ArrayLike | None, name: str) -> Any:
        """A JSON array field: the dataset id of a Dataset/id/large array, else nested lists."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, Dataset):
            return value.id
        array = as_float_array(value, name)
        if array.nbytes > self.upload_threshold_bytes:
            return self._dataset_id(array, name)
        return array.tolist()

    def _dataset_id(self, value: ArrayLike | None, name: str) -> str | None:
        """A dataset id for ``value``, uploading an array once (cached by content)."""
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, Dataset):
            return value.id
        data = to_npy(as_float_array(value, name))
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._uploaded:
            self._uploaded[digest] = self._upload_bytes(data, f"ntk-client:{name}").id
        return self._uploaded[digest]

    def _rows(self, value: ArrayLike) -> int:
        if isinstance(value, str):
            return self.dataset(value).shape[0]
        if isinstance(value, Dataset):
            return value.shape[0]
        return int(np.shape(value)[0])

    # ------------------------------------------------------------------------------ kernels
    def kernel_fn(self, spec: Spec, mode: str = "auto", progress: Progress = False) -> KernelFn:
        """neural-tangents' ``kernel_fn`` for ``spec`` (a stax network or a kernel dict).

        ``mode``: ``"auto"`` (a job for large Grams or on ``413``), ``"sync"`` or ``"job"``;
        ``progress``: a progress bar while a job runs (see :meth:`Job.wait`).
        """
        return KernelFn(self, spec, mode, progress)

    def _gram(self, kernel: dict[str, Any], x1: ArrayLike, x2: ArrayLike | None, names: tuple[str, ...] | None,
              dtype: str, mode: str, progress: Progress) -> dict[str, np.ndarray]:
        count = len(names) if names is not None else len(outputs_of(kernel))
        n1 = self._rows(x1)
        per_matrix = n1 * (n1 if x2 is None else self._rows(x2))
        if mode == "job" or (mode == "auto" and per_matrix * count > self.job_threshold_entries):
            return self._gram_by_job(kernel, x1, x2, names, dtype, progress)
        try:
            return self._gram_sync(kernel, x1, x2, names, dtype, per_matrix)
        except ProblemError as exc:
            if exc.status != 413 or mode != "auto":
                raise
        return self._gram_by_job(kernel, x1, x2, names, dtype, progress)

    def _gram_sync(self, kernel: dict[str, Any], x1: ArrayLike, x2: ArrayLike | None,
                   names: tuple[str, ...] | None, dtype: str, per_matrix: int) -> dict[str, np.ndarray]:
        body = {"kernel": kernel, "x1": self._array(x1, "x1"), "x2": self._array(x2, "x2"),
                "outputs": None if names is None else list(names), "dtype": dtype}
        wanted = tuple(dict.fromkeys(names or outputs_of(kernel)))
        if len(wanted) == 1 or (per_matrix >= self.npy_split_entries and fully_connected(kernel)):
            return {name: from_npy(self._session.call("computeKernels", json_body=body | {"outputs": [name]},
                                                      accept=NPY_MEDIA_TYPE).content) for name in wanted}
        doc = loads(self._session.call("computeKernels", json_body=body).content)
        return {name: np.asarray(matrix, dtype=doc["dtype"]) for name, matrix in doc["results"].items()}

    def _gram_by_job(self, kernel: dict[str, Any], x1: ArrayLike, x2: ArrayLike | None,
                     names: tuple[str, ...] | None, dtype: str, progress: Progress) -> dict[str, np.ndarray]:
        job = self.gram_job(kernel, x1, x2, get=names, dtype=dtype)
        job.wait(progress=progress)
        results = {name: job.result(output=name) for name in job.outputs or ()}
        job.delete()  # made for this call only
        return results

    def empirical_kernel(self, spec: Spec, x1: ArrayLike, x2: ArrayLike | None = None, width: int = 512,
                         seed: int = 0, get: str | Sequence[str] | None = ("ntk",), dtype: str = "float64"
                         ) -> EmpiricalKernel:
        """The exact NTK (and NNGP) of one network of ``width`` drawn with ``seed``, and its distance to the
        infinite-width kernel (``relative_error_to_infinite``)."""
        names = _names(get)
        doc = self._session.json("computeEmpiricalKernels", json_body={
            "kernel": kernel_json(spec), "width": width, "seed": seed, "x1": self._array(x1, "x1"),
            "x2": self._array(x2, "x2"), "outputs": None if names is None else list(names), "dtype": dtype})
        return EmpiricalKernel({name: np.asarray(m, dtype=doc["dtype"]) for name, m in doc["results"].items()},
                               dict(doc["relative_error_to_infinite"]))

    # ------------------------------------------------------------------------------ learning
    def _model(self, document: dict[str, Any]) -> Model:
        return Model(self, document)

    def fit(self, spec: Spec, x_train: ArrayLike, y_train: ArrayLike, which: str | None = None, ridge: float = 0.0,
            ridge_mode: str = "absolute", solver: str | None = None, job: bool = False, *,
            tol: float | None = None, max_iter: int | None = None, centers: int | None = None,
            seed: int | None = None, progress: Progress = False) -> Model:
        """Fit kernel regression (``K + ridge·I``; ``ridge_mode="relative"``: ``ridge·trace(K)/n``).

        ``job=True`` (or a ``413`` from the synchronous fit) runs a ``fit`` job and waits for it.
        ``solver`` and its options (``tol``, ``max_iter``, ``centers``, ``seed``) are sent only when given.
        """
        options = {"solver": solver, "tol": tol, "max_iter": max_iter, "centers": centers, "seed": seed}
        if not job:
            try:
                doc = self._session.json("createModel", json_body={
                    "kernel": kernel_json(spec), "which": which, "x_train": self._array(x_train, "x_train"),
                    "y_train": self._array(y_train, "y_train"), "ridge": ridge, "ridge_mode": ridge_mode,
                    **options})
                return Model(self, doc)
            except ProblemError as exc:
                if exc.status != 413:
                    raise
        fit_job = self.fit_job(spec, x_train, y_train, which, ridge, ridge_mode, solver=solver, tol=tol,
                               max_iter=max_iter, centers=centers, seed=seed)
        return fit_job.wait(progress=progress).model()

    def model(self, model_id: str) -> Model:
        return Model(self, self._session.json("getModel", path={"model_id": model_id}))

    def models(self, limit: int | None = None) -> list[Model]:
        """The caller's models, newest first (all, or the first ``limit``)."""
        return [Model(self, doc) for doc in self._list("listModels", limit)]

    def delete_model(self, model_id: str) -> None:
        self._session.call("deleteModel", path={"model_id": model_id})

    def trajectory(self, spec: Spec, x_train: ArrayLike, y_train: ArrayLike, times: Sequence[float],
                   which: str | None = None, ridge: float = 0.0, learning_rate: float = 1.0, method: str = "flow",
                   x_test: ArrayLike | None = None, y_test: ArrayLike | None = None,
                   loss_normalization: str = "mean", *, ridge_mode: str = "absolute", job: bool = False,
                   progress: Progress = False) -> Trajectory:
        """One-shot training trajectory (``POST /v1/trajectories``; ``job=True`` or a ``413``: a job)."""
        if not job:
            try:
                doc = self._session.json("computeTrajectory", json_body={
                    "kernel": kernel_json(spec), "which": which, "x_train": self._array(x_train, "x_train"),
                    "y_train": self._array(y_train, "y_train"), "ridge": ridge, "ridge_mode": ridge_mode,
                    "times": [float(t) for t in times], "learning_rate": learning_rate, "method": method,
                    "x_test": self._array(x_test, "x_test"), "y_test": self._array(y_test, "y_test"),
                    "loss_normalization": loss_normalization})
                return Trajectory.from_document(doc, method)
            except ProblemError as exc:
                if exc.status != 413:
                    raise
        traj_job = self.trajectory_job(spec, x_train, y_train, times, which, ridge, learning_rate, method, x_test,
                                       y_test, loss_normalization, ridge_mode=ridge_mode)
        return traj_job.wait(progress=progress).result()  # type: ignore[no-any-return]

    def spectrum(self, spec: Spec, x: ArrayLike, which: str | None = None, top_k: int | None = None) -> Spectrum:
        """Eigenvalues (descending) of the Gram matrix of ``x``, condition number, λ_min, trace."""
        doc = self._session.json("computeSpectrum", json_body={
            "kernel": kernel_json(spec), "which": which, "x": self._array(x, "x"), "top_k": top_k})
        return Spectrum(np.asarray(doc["eigenvalues"], dtype=np.float64), doc["condition_number"],
                        float(doc["min_eigenvalue"]), float(doc["trace"]))

    def lazy_training(self, spec: Spec, x_train: ArrayLike, y_train: ArrayLike, x_test: ArrayLike | None = None, *,
                      width: int, steps: Sequence[int], y_test: ArrayLike | None = None, seed: int = 0,
                      learning_rate: float = 1.0, loss_normalization: str = "mean", dtype: str = "float64"
                      ) -> LazyTraining:
        """Train a real network of ``width`` by gradient descent beside its NTK prediction, at each of ``steps``."""
        doc = self._session.json("lazyTraining", json_body={
            "kernel": kernel_json(spec), "width": width, "seed": seed, "x_train": self._array(x_train, "x_train"),
            "y_train": self._array(y_train, "y_train"), "steps": [int(s) for s in steps],
            "learning_rate": learning_rate, "x_test": self._array(x_test, "x_test"),
            "y_test": self._array(y_test, "y_test"), "loss_normalization": loss_normalization, "dtype": dtype})
        return LazyTraining.from_document(doc)

    # ------------------------------------------------------------------------------ datasets
    def _upload_bytes(self, data: bytes, name: str | None) -> Dataset:
        response = self._session.call("createDataset", content=data, params={"name": name})
        return Dataset.from_document(response.json())

    def upload(self, array: ArrayLike, name: str | None = None) -> Dataset:
        """Upload ``array`` as ``.npy`` (float32 kept, anything else float64); use the Dataset (or its id) as input."""
        return self._upload_bytes(to_npy(as_float_array(array, "array")), name)

    def dataset(self, dataset_id: str) -> Dataset:
        return Dataset.from_document(self._session.json("getDataset", path={"dataset_id": dataset_id}))

    def datasets(self, limit: int | None = None) -> list[Dataset]:
        """The caller's datasets, newest first (all, or the first ``limit``)."""
        return [Dataset.from_document(doc) for doc in self._list("listDatasets", limit)]

    def delete_dataset(self, dataset_id: str | Dataset) -> None:
        dataset_id = dataset_id.id if isinstance(dataset_id, Dataset) else dataset_id
        self._session.call("deleteDataset", path={"dataset_id": dataset_id})
        self._uploaded = {k: v for k, v in self._uploaded.items() if v != dataset_id}

    def _list(self, name: str, limit: int | None, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token = None
        while limit is None or len(items) < limit:
            page = min(100, limit - len(items)) if limit is not None else 100
            doc = self._session.json(name, params={"limit": page, "page_token": token, **params})
            items.extend(doc["items"])
            token = doc["next_page_token"]
            if not token:
                break
        return items

    # ------------------------------------------------------------------------------ jobs
    def gram_job(self, spec: Spec, x1: ArrayLike, x2: ArrayLike | None = None,
                 get: str | Sequence[str] | None = ("ntk",), dtype: str = "float64", device: str = "cpu") -> Job:
        """Start a tiled Gram job (inputs uploaded as datasets unless given as ones); ``get=None``: all matrices."""
        kernel = kernel_json(spec)
        names = _names(get) or outputs_of(kernel)
        doc = self._session.json("createGramJob", json_body={
            "type": "gram", "kernel": kernel, "x1": self._dataset_id(x1, "x1"), "x2": self._dataset_id(x2, "x2"),
            "outputs": list(names), "dtype": dtype, "device": device})
        return Job(self, doc, outputs=tuple(dict.fromkeys(names)))

    def fit_job(self, spec: Spec, x_train: ArrayLike, y_train: ArrayLike, which: str | None = None,
                ridge: float = 0.0, ridge_mode: str = "absolute", device: str = "cpu", *, solver: str | None = None,
                tol: float | None = None, max_iter: int | None = None, centers: int | None = None,
                seed: int | None = None) -> Job:
        """Start a ``fit`` job; ``job.wait().model()`` is the fitted :class:`Model`."""
        doc = self._session.json("createFitJob", json_body={
            "type": "fit", "kernel": kernel_json(spec), "which": which,
            "x_train": self._dataset_id(x_train, "x_train"), "y_train": self._dataset_id(y_train, "y_train"),
            "ridge": ridge, "ridge_mode": ridge_mode, "device": device, "solver": solver, "tol": tol,
            "max_iter": max_iter, "centers": centers, "seed": seed})
        return Job(self, doc)

    def trajectory_job(self, spec: Spec, x_train: ArrayLike, y_train: ArrayLike, times: Sequence[float],
                       which: str | None = None, ridge: float = 0.0, learning_rate: float = 1.0, method: str = "flow",
                       x_test: ArrayLike | None = None, y_test: ArrayLike | None = None,
                       loss_normalization: str = "mean", *, ridge_mode: str = "absolute", device: str = "cpu",
                       solver: str | None = None, tol: float | None = None, max_iter: int | None = None,
                       include: Sequence[str] | None = None) -> Job:
        """Start a ``trajectory`` job; ``job.wait().result()`` is the :class:`Trajectory`.

        ``solver`` (``"eigh"``, ``"krylov"``, ``"auto"``), ``tol`` and ``max_iter`` are sent only when
        given. ``include``: the prediction arrays carried in the JSON result (``[]``: losses only);
        any of them is also ``job.result(output="train_predictions")`` as a NumPy array (``T × n × k``).
        """
        doc = self._session.json("createTrajectoryJob", json_body={
            "type": "trajectory", "kernel": kernel_json(spec), "which": which,
            "x_train": self._dataset_id(x_train, "x_train"), "y_train": self._dataset_id(y_train, "y_train"),
            "ridge": ridge, "ridge_mode": ridge_mode, "times": [float(t) for t in times],
            "learning_rate": learning_rate, "method": method, "x_test": self._dataset_id(x_test, "x_test"),
            "y_test": self._dataset_id(y_test, "y_test"), "loss_normalization": loss_normalization,
            "device": device, "solver": solver, "tol": tol, "max_iter": max_iter,
            "include": None if include is None else list(include)})
        return Job(self, doc, method=method)

    def job(self, job_id: str) -> Job:
        return Job(self, self._session.json("getJob", path={"job_id": job_id}))

    def jobs(self, status: str | None = None, limit: int | None = None) -> list[Job]:
        """The caller's jobs, newest first, optionally only those with ``status``."""
        return [Job(self, doc) for doc in self._list("listJobs", limit, status=status)]
