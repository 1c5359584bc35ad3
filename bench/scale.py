"""Large training sets end to end (issue 10): cg, nystrom and krylov jobs against a real API process.

    python bench/scale.py [--scenario all] [--scale 1.0] [--data manifold] [--data gaussian] [--n-test 2000]
                          [--ridge 1e-3] [--tol 1e-6] [--set NTK_X=VALUE ...]

Scenarios (``--scenario``, repeatable; ``all`` runs them in this order):

- ``nystrom-vs-cholesky-20k``: n = 20 000, a ``cholesky`` fit job and a ``nystrom`` one with n/10 centers
  (goals: nystrom's test MSE within 5 % of the exact fit's, its job time ≤ 1/5 of cholesky's), on each
  kind of ``--data``;
- ``nystrom-100k``: n = 100 000, n/10 centers (goals: ≤ 5 min end to end, every process ≤ 6 GB, API ≤ 1 GB);
- ``cg-40k``: n = 40 000, ``cg`` (goal: converges with every process ≤ 4 GB), against a ``cholesky`` job
  (time ratio, and predictions compared; run only where it fits one worker's memory, ``CHOLESKY_BYTES``)
  and ``cg`` without its preconditioner (the server setting ``NTK_CG_PRECONDITIONER_RANK=0``; the API has
  no request field for it) capped at ``--cg-plain-max-iter``;
- ``nystrom-1m``: n = 1 000 000, d = 16, 4 000 centers (goal: completes on the embedded engine), and the same
  at n/10, so that the time ratio shows how the cost grows with n;
- ``krylov-50k``: a ``krylov`` trajectory job, n = 50 000, 100 times, test predictions only (time, iterations,
  the service's error estimate, and the error measured against an ``eigh`` job where n is within
  ``NTK_MAX_JOB_TRAIN_SIZE`` and it fits one worker's memory, ``EIGH_BYTES``).

``--scale s`` multiplies every n (centers follow where they are a fraction of n) for a quick run.

Every job runs in a fresh ``python -m service serve`` (default settings plus ``--set``; its embedded Dask
``LocalCluster``; a temporary ``NTK_DATA_DIR``), warmed up by a tiny job of the same kind first. Data
(``--data``, float32 inputs, d = 784 unless said, targets y = sin(⟨w, z⟩) + 0.1·ε with ‖w‖ = 1, a held-out
test set of ``--n-test`` points): ``manifold`` — inputs near a q-dimensional subspace (q = ``--latent``,
default 4), x = z·B + 0.1·ε with z ~ N(0, I_q) and B a random orthonormal q × d basis scaled so that
‖x‖² ≈ d; ``gaussian`` — x = z ~ N(0, I_d). How many centers Nyström needs to match the exact fit grows
quickly with the data's intrinsic dimension (depth-3 ReLU NTK, relative ridge 1e-3, n/10 centers, test MSE
÷ the exact fit's, measured at n = 5 000–10 000: about 1.01–1.06 at q = 4, 1.3 at q = 8, 1.8 at q = 16 and for
``gaussian``), so the 5 % goal is checked on both kinds by default. Written to ``.npy`` files in chunks
(the bench stays small in memory) and uploaded as datasets. Kernel: depth-3 ReLU NTK; ridge relative
(``--ridge``), ``tol`` ``--tol``.
A job's time is from its submission until the API reports it finished; "end to end" adds the upload of the
training data. Peak memory is each process's VmHWM (Linux), read every 0.2 s during the run for the API
process and each of its child processes (Dask workers are the children that listen on a TCP port);
memory is taken when the job has finished, before the test predictions (synchronous, on the API)
are asked for. Test MSE: mean over test points of (prediction − y)², predictions from
``POST /v1/models/{id}/predictions`` in batches. Ends with a table of goal, measured value and met / not met
(goals are stated for the full sizes; at ``--scale`` < 1 they are indications only).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from dask.utils import parse_bytes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.overload import free_port, start_server  # noqa: E402 — after the sys.path entry
from bench.rss import status as proc_status  # noqa: E402
from service.settings import Settings  # noqa: E402

KERNEL = {"type": "network",
          "layers": [{"type": "dense", "w_std": 1.41, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense"}]}
NOISE = 0.1
GB = 1e9
MB = 1e6
TERMINAL = ("succeeded", "failed", "cancelled")
#: Peak bytes per n² of the dense jobs' worker: cholesky fit measured (10.0 GB at n = 20 000: the Gram,
#: its factor and temporaries); eigh estimated (K, its copy, the eigenvectors and LAPACK's 2·n²
#: workspace — at n = 20 000 a worker was restarted above 11.2 GB).
CHOLESKY_BYTES = 25
EIGH_BYTES = 40


# ----------------------------------------------------------------------------- data

@dataclass(frozen=True)
class Problem:
    """A regression problem as .npy files: x float32 (n × d), y float64 (n,), and a test set."""

    n: int
    d: int
    n_test: int
    data: str
    latent: int
    x_train: Path
    y_train: Path
    x_test: Path
    y_test: Path

    @property
    def kind(self) -> str:
        return self.data if self.data == "gaussian" else f"{self.data} (latent dimension {self.latent})"


def _write_set(x_path: Path, y_path: Path, n: int, d: int, data: str, latent: int, seed: int, part: int) -> None:
    """Inputs and targets (module docstring) appended chunk by chunk to .npy files (plain writes,
    not a memory map: the written pages do not count in this process's RSS)."""
    q = d if data == "gaussian" else min(latent, d)
    setup = np.random.default_rng([seed, 0])
    w = setup.standard_normal(q)
    w /= np.linalg.norm(w)
    # manifold: x = z·B + 0.1·ε with B (q × d) of orthonormal rows scaled by √(d/q), so ‖x‖² ≈ 1.01·d
    basis = np.linalg.qr(setup.standard_normal((d, q)))[0].T * np.sqrt(d / q)
    rows = max(1, (1 << 24) // d)  # 64 MB of float32 per chunk
    with open(x_path, "wb") as fx, open(y_path, "wb") as fy:
        for f, dtype, shape in ((fx, np.float32, (n, d)), (fy, np.float64, (n,))):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
        for i, start in enumerate(range(0, n, rows)):
            m = min(n, start + rows) - start
            rng = np.random.default_rng([seed, part, i])
            z = rng.standard_normal((m, q))
            x = z if data == "gaussian" else z @ basis + 0.1 * rng.standard_normal((m, d))
            fx.write(x.astype(np.float32).tobytes())
            fy.write((np.sin(z @ w) + NOISE * rng.standard_normal(m)).tobytes())


def write_problem(folder: Path, n: int, d: int, n_test: int, data: str, latent: int, seed: int = 0) -> Problem:
    """The problem of size (n, d) in ``folder`` (written once per size and reused)."""
    latent = d if data == "gaussian" else min(latent, d)
    folder = folder / f"{data}-q{latent}-n{n}-d{d}-t{n_test}-s{seed}"
    paths = {name: folder / f"{name}.npy" for name in ("x_train", "y_train", "x_test", "y_test")}
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        _write_set(paths["x_train"], paths["y_train"], n, d, data, latent, seed, 1)
        _write_set(paths["x_test"], paths["y_test"], n_test, d, data, latent, seed, 2)
        (folder / "done").touch()
    return Problem(n, d, n_test, data, latent, **paths)


# ----------------------------------------------------------------------------- memory

class Sampler(threading.Thread):
    """Every ``interval`` s: the VmHWM (peak RSS) of the API process and of each of its descendants,
    labelled ``API``, ``dask worker`` (listens on a TCP port) or ``helper``."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.api = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self.labels: dict[int, str] = {pid: "API"}
        self.seen: dict[int, psutil.Process] = {}
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def _label(self, proc: psutil.Process) -> str:
        if self.labels.get(proc.pid) == "dask worker":
            return "dask worker"
        try:
            if any(c.status == psutil.CONN_LISTEN for c in proc.net_connections("tcp")):
                return "dask worker"
            if "resource_tracker" in " ".join(proc.cmdline()):
                return "resource tracker"
        except psutil.Error:
            pass
        return "helper"

    def sample(self) -> None:
        try:
            children = self.api.children(recursive=True)
        except psutil.Error:
            children = []
        with self.lock:
            for proc in [self.api, *children]:
                self.seen.setdefault(proc.pid, proc)
                if proc.pid != self.api.pid:
                    self.labels[proc.pid] = self._label(proc)
                with suppress(OSError):  # gone between the listing and the read
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), proc_status("VmHWM", proc.pid))

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def snapshot(self) -> Memory:
        """The peaks so far (after one more sample)."""
        self.sample()
        with self.lock:
            return Memory({pid: (self.labels[pid], peak) for pid, peak in self.peaks.items()})


@dataclass(frozen=True)
class Memory:
    """Peak RSS (bytes) by process id, with each process's label."""

    peaks: dict[int, tuple[str, int]]

    def of(self, label: str) -> list[int]:
        return [peak for lab, peak in self.peaks.values() if lab == label]

    @property
    def api(self) -> int:
        return max(self.of("API"), default=0)

    @property
    def largest(self) -> int:
        return max((peak for _, peak in self.peaks.values()), default=0)

    def describe(self) -> str:
        workers = " / ".join(f"{p / MB:.0f}" for p in self.of("dask worker")) or "none seen"
        helpers = self.of("helper")
        extra = f", other helpers max {max(helpers) / MB:.0f} MB" if helpers else ""
        return (f"peak RSS: API {self.api / MB:.0f} MB, Dask workers {workers} MB{extra} "
                f"(largest process {self.largest / GB:.2f} GB)")


# ----------------------------------------------------------------------------- server and HTTP

@dataclass
class Server:
    base: str
    client: httpx.Client
    sampler: Sampler


@contextmanager
def serving(workdir: Path, overrides: dict[str, str]) -> Iterator[Server]:
    """A fresh API process (temporary data directory) with its memory sampled; every process it
    started is gone afterwards."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="data-") as data_dir:
        port = free_port()
        proc = start_server(port, data_dir, overrides)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                yield Server(f"http://127.0.0.1:{port}", client, sampler)
        finally:
            sampler.halt.set()
            sampler.join()
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for child in sampler.seen.values():  # only processes this server started
                if child.pid != proc.pid and child.is_running():
                    child.kill()


def raise_for_problem(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:2000]}")
    return response


def upload(client: httpx.Client, path: Path) -> str:
    """Stream one .npy file as a dataset; its id."""
    size = path.stat().st_size

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            while block := f.read(8 << 20):
                yield block

    response = client.post("/v1/datasets", content=chunks(), params={"name": path.stem},
                           headers={"content-type": "application/x-npy", "content-length": str(size)})
    return str(raise_for_problem(response).json()["id"])


@dataclass
class JobRun:
    """One job's outcome: its final document, result (if it succeeded), seconds and memory."""

    label: str
    job: dict[str, Any]
    result: dict[str, Any] | None
    upload_s: float
    job_s: float
    memory: Memory
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.job["status"] == "succeeded"

    @property
    def end_to_end_s(self) -> float:
        return self.upload_s + self.job_s

    @property
    def solver(self) -> dict[str, Any]:
        return dict((self.result or {}).get("solver") or {})

    @property
    def error(self) -> str:
        problem = self.job.get("error") or {}
        return str(problem.get("detail") or problem.get("title") or self.job["status"])


def wait_for(server: Server, job_id: str, timeout: float, label: str) -> dict[str, Any]:
    """Poll a job to its end (cancelled after ``timeout`` s); progress on stderr every 30 s."""
    started = last = time.monotonic()
    while True:
        job = raise_for_problem(server.client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] in TERMINAL:
            return dict(job)
        now = time.monotonic()
        if now - started > timeout:
            server.client.post(f"/v1/jobs/{job_id}/cancel")
            job = raise_for_problem(server.client.get(f"/v1/jobs/{job_id}")).json()
            job["error"] = {"detail": f"cancelled by the bench after {timeout:.0f} s"}
            return dict(job)
        if now - last >= 30:
            print(f"    … {label}: {job['status']}, progress {job['progress']:.2f} after {now - started:.0f} s",
                  file=sys.stderr, flush=True)
            last = now
        time.sleep(0.25)


def run_job(server: Server, label: str, problem: Problem, body: dict[str, Any], timeout: float,
            with_test: bool = False) -> JobRun:
    """Upload the training data (timed), submit the job, wait for it; the peaks as it ends."""
    started = time.perf_counter()
    ids = {"x_train": upload(server.client, problem.x_train), "y_train": upload(server.client, problem.y_train)}
    upload_s = time.perf_counter() - started
    if with_test:
        ids |= {"x_test": upload(server.client, problem.x_test), "y_test": upload(server.client, problem.y_test)}
    started = time.perf_counter()
    job = raise_for_problem(server.client.post("/v1/jobs", json={**body, **ids})).json()
    job = wait_for(server, job["id"], timeout, label)
    job_s = time.perf_counter() - started
    memory = server.sampler.snapshot()
    result = None
    if job["status"] == "succeeded":
        result = raise_for_problem(server.client.get(f"/v1/jobs/{job['id']}/result")).json()
    return JobRun(label, job, result, upload_s, job_s, memory)


def warm_up(server: Server, tiny: Problem, body: dict[str, Any]) -> None:
    """A tiny job of the same kind: the engine's workers started and their imports done before timing."""
    small = dict(body)
    if small.get("centers"):
        small["centers"] = min(int(small["centers"]), tiny.n // 4)
    run = run_job(server, "warm-up", tiny, small, 600, with_test="times" in body)
    if not run.ok:
        raise RuntimeError(f"the warm-up job failed: {run.error}")


def test_predictions(server: Server, run: JobRun, problem: Problem) -> np.ndarray:
    """Predictions of the fitted model on the test set, in batches within the synchronous work limit."""
    assert run.result is not None
    basis = int(run.solver.get("centers") or run.result["n_train"])
    batch = max(1, min(problem.n_test, int(5e10 / (basis * problem.d * 4))))
    x_test = np.load(problem.x_test, mmap_mode="r")
    parts = []
    with tempfile.TemporaryDirectory(dir=problem.x_test.parent) as tmp:
        for start in range(0, problem.n_test, batch):
            path = Path(tmp) / f"x_test_{start}.npy"
            np.save(path, np.asarray(x_test[start:start + batch]))
            dataset = upload(server.client, path)
            answer = server.client.post(f"/v1/models/{run.result['id']}/predictions", json={"x_test": dataset})
            parts.append(np.asarray(raise_for_problem(answer).json()["mean"], dtype=np.float64))
            server.client.delete(f"/v1/datasets/{dataset}")
    return np.concatenate(parts)[:, 0]


def mse(prediction: np.ndarray, problem: Problem) -> float:
    return float(np.mean((prediction - np.load(problem.y_test)) ** 2))


# ----------------------------------------------------------------------------- requests

def fit_body(solver: str, args: argparse.Namespace, centers: int | None = None, max_iter: int | None = None
             ) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "fit", "kernel": KERNEL, "ridge": args.ridge, "ridge_mode": "relative",
                            "solver": solver}
    if solver != "cholesky":
        body |= {"tol": args.tol, "max_iter": max_iter or args.max_iter, "seed": args.seed}
    if centers is not None:
        body["centers"] = centers
    return body


def trajectory_body(solver: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """100 gradient-flow times from 0.01·n to 1000·n (loss normalised by n: e^{−K t / n})."""
    times = (n * np.geomspace(1e-2, 1e3, args.times)).tolist()
    return {"type": "trajectory", "kernel": KERNEL, "ridge": args.ridge, "ridge_mode": "relative",
            "solver": solver, "tol": args.tol, "max_iter": args.max_iter, "times": times, "method": "flow",
            "include": ["test_predictions"]}


# ----------------------------------------------------------------------------- reporting

@dataclass
class Goal:
    scenario: str
    goal: str
    measured: str
    met: bool | None  # None: reported, no pass mark


def fmt_solver(run: JobRun) -> str:
    s = run.solver
    if not s:
        return "no solver object in the result"
    parts = [f"solver {s['type']}"]
    if s.get("centers") is not None:
        parts.append(f"centers {s['centers']}")
    if s.get("iterations") is not None:
        parts.append(f"iterations {s['iterations']}")
    if s.get("relative_residual") is not None:
        parts.append(f"relative residual {s['relative_residual']:.2e}")
    if s.get("estimated_error") is not None:
        parts.append(f"estimated error {s['estimated_error']:.2e}")
    return ", ".join(parts)


def report(scenario: str, run: JobRun, problem: Problem) -> None:
    head = f"  [{scenario}] {run.label}, {problem.kind} data, n = {problem.n}, d = {problem.d}: "
    if run.ok:
        print(f"{head}upload {run.upload_s:.1f} s, job {run.job_s:.1f} s, end to end {run.end_to_end_s:.1f} s; "
              f"{fmt_solver(run)}")
    else:
        print(f"{head}{run.job['status'].upper()} after {run.job_s:.1f} s: {run.error}")
    print(f"      {run.memory.describe()}")
    for note in run.notes:
        print(f"      {note}")


def status_note(run: JobRun) -> str:
    """'' for a job that succeeded, else ' (job failed)' etc."""
    return "" if run.ok else f" (job {run.job['status']})"


ITERATIONS = re.compile(r"after (\d+) iterations")
RESIDUAL = re.compile(r"relative residual ([0-9.eE+-]+)")


def iterations_of(run: JobRun) -> str:
    """'N' when the job converged, else what its error says ('> N (residual r)')."""
    if run.ok:
        return str(run.solver.get("iterations"))
    it, res = ITERATIONS.search(run.error), RESIDUAL.search(run.error)
    if it:
        return f"> {it.group(1)} (not converged{', residual ' + res.group(1) if res else ''})"
    return f"failed ({run.error[:120]})"


# ----------------------------------------------------------------------------- scenarios

@dataclass
class Bench:
    args: argparse.Namespace
    workdir: Path
    overrides: dict[str, str]
    goals: list[Goal] = field(default_factory=list)

    def size(self, n: int) -> int:
        return max(64, round(n * self.args.scale))

    def problem(self, n: int, d: int = 784, data: str | None = None) -> Problem:
        """The problem of ``n`` points (``data``: default the first of ``--data``)."""
        return write_problem(self.workdir / "data", n, d, min(self.args.n_test, n), data or self.args.data[0],
                             self.args.latent)

    def run(self, scenario: str, label: str, problem: Problem, body: dict[str, Any],
            overrides: dict[str, str] | None = None, predict: bool = True) -> tuple[JobRun, np.ndarray | None]:
        """One job in a fresh server (warmed up with the same body on a tiny problem); test predictions."""
        tiny = write_problem(self.workdir / "data", 256, problem.d, 32, problem.data, problem.latent)
        with serving(self.workdir, self.overrides | (overrides or {})) as server:
            warm_up(server, tiny, body)
            run = run_job(server, label, problem, body, self.args.job_timeout, with_test="times" in body)
            prediction = None
            if run.ok and predict:
                started = time.perf_counter()
                prediction = test_predictions(server, run, problem)
                run.notes.append(f"test MSE {mse(prediction, problem):.5f} (var(y_test) "
                                 f"{np.var(np.load(problem.y_test)):.5f}; predictions took "
                                 f"{time.perf_counter() - started:.1f} s)")
        report(scenario, run, problem)
        return run, prediction

    def worker_memory(self) -> int:
        """Bytes one embedded Dask worker may use: ``NTK_DASK_WORKER_MEMORY``, else (the LocalCluster's
        "auto") the machine's memory ÷ ``NTK_DASK_WORKERS``."""
        if "NTK_DASK_WORKER_MEMORY" in self.overrides:
            return int(parse_bytes(self.overrides["NTK_DASK_WORKER_MEMORY"]))
        workers = int(self.overrides.get("NTK_DASK_WORKERS", Settings.model_fields["dask_workers"].default))
        return int(psutil.virtual_memory().total / workers)

    def goal(self, scenario: str, goal: str, measured: str, met: bool | None) -> None:
        self.goals.append(Goal(scenario, goal, measured, met))

    # --- the scenarios

    def nystrom_vs_cholesky_20k(self) -> None:
        """On every kind of ``--data`` (the exact fit and nystrom on the same data)."""
        name = "nystrom-vs-cholesky-20k"
        for data in self.args.data:
            problem = self.problem(self.size(20_000), data=data)
            centers = max(1, problem.n // 10)
            exact, exact_pred = self.run(name, "cholesky", problem, fit_body("cholesky", self.args))
            approx, approx_pred = self.run(name, f"nystrom ({centers} centers)", problem,
                                           fit_body("nystrom", self.args, centers))
            goal = f"{problem.kind} data: nystrom test MSE ≤ 1.05 × cholesky's"
            if exact_pred is not None and approx_pred is not None:
                ratio = mse(approx_pred, problem) / mse(exact_pred, problem)
                self.goal(name, goal, f"{ratio:.3f} × ({mse(approx_pred, problem):.4f} vs "
                          f"{mse(exact_pred, problem):.4f})", ratio <= 1.05)
            else:
                self.goal(name, goal, "a job failed", False)
            if exact.ok and approx.ok:
                ratio = approx.job_s / exact.job_s
                self.goal(name, f"{problem.kind} data: nystrom job time ≤ 1/5 of cholesky's",
                          f"{approx.job_s:.1f} s / {exact.job_s:.1f} s = {ratio:.3f}", ratio <= 0.2)

    def nystrom_100k(self) -> None:
        name = "nystrom-100k"
        problem = self.problem(self.size(100_000))
        centers = max(1, problem.n // 10)
        run, _ = self.run(name, f"nystrom ({centers} centers)", problem, fit_body("nystrom", self.args, centers))
        self.goal(name, "fit job end to end ≤ 300 s",
                  f"{run.end_to_end_s:.1f} s" if run.ok else run.job["status"], run.ok and run.end_to_end_s <= 300)
        self.goal(name, "every process ≤ 6 GB", f"largest {run.memory.largest / GB:.2f} GB{status_note(run)}",
                  run.ok and run.memory.largest <= 6 * GB)
        self.goal(name, "API process ≤ 1 GB", f"{run.memory.api / GB:.2f} GB", run.memory.api <= 1 * GB)

    def cg_40k(self) -> None:
        name = "cg-40k"
        problem = self.problem(self.size(40_000))
        cg, cg_pred = self.run(name, "cg (preconditioned)", problem, fit_body("cg", self.args))
        plain, _ = self.run(name, f"cg without preconditioner (max_iter {self.args.cg_plain_max_iter})", problem,
                            fit_body("cg", self.args, max_iter=self.args.cg_plain_max_iter),
                            overrides={"NTK_CG_PRECONDITIONER_RANK": "0"}, predict=False)
        room = self.worker_memory()
        if CHOLESKY_BYTES * problem.n**2 <= room:
            exact, exact_pred = self.run(name, "cholesky", problem, fit_body("cholesky", self.args))
        else:
            exact, exact_pred = None, None
            self.goal(name, "cholesky job (time and memory reference)", f"not run: its n × n matrix and factor "
                      f"({CHOLESKY_BYTES}·n² = {CHOLESKY_BYTES * problem.n**2 / GB:.1f} GB) exceed a worker's memory here "
                      f"({room / GB:.1f} GB = machine ÷ NTK_DASK_WORKERS)", None)
        self.goal(name, f"cg converges (tol {self.args.tol:g}, relative ridge {self.args.ridge:g})",
                  iterations_of(cg) + " iterations", cg.ok)
        self.goal(name, "every process ≤ 4 GB during cg", f"largest {cg.memory.largest / GB:.2f} GB{status_note(cg)}",
                  cg.ok and cg.memory.largest <= 4 * GB)
        if cg.ok and exact is not None and exact.ok:
            self.goal(name, "cg job time ÷ cholesky job time (reported)",
                      f"{cg.job_s:.1f} s / {exact.job_s:.1f} s = {cg.job_s / exact.job_s:.2f}", None)
            self.goal(name, "largest process: cg vs cholesky (reported)",
                      f"{cg.memory.largest / GB:.2f} GB vs {exact.memory.largest / GB:.2f} GB", None)
        if cg_pred is not None and exact_pred is not None:
            diff = float(np.linalg.norm(cg_pred - exact_pred) / np.linalg.norm(exact_pred))
            self.goal(name, "cg test predictions vs cholesky's, relative (reported)", f"{diff:.1e}", None)
        self.goal(name, "cg iterations with / without preconditioner (fewer with)",
                  f"{iterations_of(cg)} / {iterations_of(plain)} "
                  "(without: server setting NTK_CG_PRECONDITIONER_RANK=0; the API has no request field for it)",
                  cg.ok and (not plain.ok or int(cg.solver["iterations"]) < int(plain.solver["iterations"])))

    def nystrom_1m(self) -> None:
        name = "nystrom-1m"
        runs = []
        sizes = (self.size(100_000), self.size(1_000_000))
        centers = min(4000, sizes[0])  # the same M at both sizes: the time ratio is then the growth in n
        for n in sizes:
            problem = self.problem(n, d=16)
            run, _ = self.run(name, f"nystrom ({centers} centers)", problem, fit_body("nystrom", self.args, centers))
            runs.append((n, run))
        (n_small, small), (n_large, large) = runs
        self.goal(name, f"nystrom fit job, n = {n_large}, d = 16, completes on the embedded engine",
                  f"{large.job['status']} in {large.end_to_end_s:.1f} s end to end, largest process "
                  f"{large.memory.largest / GB:.2f} GB, API {large.memory.api / GB:.2f} GB", large.ok)
        if small.ok and large.ok:
            self.goal(name, f"job time n = {n_large} ÷ n = {n_small} (linear in n: → {n_large / n_small:.0f} as the per-point part dominates)",
                      f"{large.job_s:.1f} s / {small.job_s:.1f} s = {large.job_s / small.job_s:.2f}", None)

    def krylov_50k(self) -> None:
        name = "krylov-50k"
        problem = self.problem(self.size(50_000))
        run, _ = self.run(name, f"krylov trajectory ({self.args.times} times)", problem,
                          trajectory_body("krylov", problem.n, self.args), predict=False)
        self.goal(name, "krylov trajectory completes (time reported)",
                  f"{run.job['status']} in {run.job_s:.1f} s, {fmt_solver(run)}", run.ok)
        limit = int(self.overrides.get("NTK_MAX_JOB_TRAIN_SIZE", Settings.model_fields["max_job_train_size"].default))
        if problem.n > limit or EIGH_BYTES * problem.n**2 > self.worker_memory():
            self.goal(name, "accuracy against eigh", f"not measured: n = {problem.n} is over the eigh limit "
                      f"NTK_MAX_JOB_TRAIN_SIZE = {limit} or its ~{EIGH_BYTES}·n² bytes over a worker's memory "
                      f"({self.worker_memory() / GB:.1f} GB); the service's estimate is in the row above", None)
            return
        reference, _ = self.run(name, "eigh trajectory (reference)", problem,
                                trajectory_body("eigh", problem.n, self.args), predict=False)
        if run.ok and reference.ok:
            assert run.result is not None and reference.result is not None
            got = np.asarray(run.result["test_predictions"])
            want = np.asarray(reference.result["test_predictions"])
            per_time = np.linalg.norm((got - want).reshape(len(got), -1), axis=1) / np.maximum(
                np.linalg.norm(want.reshape(len(want), -1), axis=1), 1e-300)
            loss = np.max(np.abs(np.subtract(run.result["train_loss"], reference.result["train_loss"]))
                          / np.abs(reference.result["train_loss"]))
            self.goal(name, "accuracy against eigh (reported)",
                      f"test predictions max relative error over times {per_time.max():.1e}; train loss "
                      f"{loss:.1e}; eigh job {reference.job_s:.1f} s vs krylov {run.job_s:.1f} s", None)


SCENARIOS = {
    "nystrom-vs-cholesky-20k": Bench.nystrom_vs_cholesky_20k,
    "nystrom-100k": Bench.nystrom_100k,
    "cg-40k": Bench.cg_40k,
    "nystrom-1m": Bench.nystrom_1m,
    "krylov-50k": Bench.krylov_50k,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=[*SCENARIOS, "all"],
                        help="repeatable; default all")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every n by this (quick runs)")
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--ridge", type=float, default=1e-3, help="relative ridge (× trace K / n)")
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--cg-plain-max-iter", type=int, default=200,
                        help="iteration cap of cg without preconditioner (it may not converge)")
    parser.add_argument("--data", action="append", choices=["manifold", "gaussian"],
                        help="repeatable; nystrom-vs-cholesky-20k runs on each, the others on the first "
                        "(default: manifold, gaussian)")
    parser.add_argument("--latent", type=int, default=4, help="latent dimension of the manifold data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--times", type=int, default=100, help="trajectory times (krylov-50k)")
    parser.add_argument("--job-timeout", type=float, default=3600, help="seconds before a job is cancelled")
    parser.add_argument("--workdir", type=Path, default=None, help="data files and server data directories "
                        "(default: a temporary directory, removed at the end)")
    parser.add_argument("--set", action="append", default=[], metavar="NTK_X=VALUE",
                        help="a server setting other than its default (repeatable)")
    args = parser.parse_args()
    args.data = list(dict.fromkeys(args.data or ["manifold", "gaussian"]))
    chosen = list(SCENARIOS) if not args.scenario or "all" in args.scenario else list(dict.fromkeys(args.scenario))
    overrides = dict(item.split("=", 1) for item in args.set)
    print(f"scale.py: scenarios {', '.join(chosen)}; scale {args.scale:g}; relative ridge {args.ridge:g}, "
          f"tol {args.tol:g}; {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB, load average "
          f"{os.getloadavg()[0]:.2f}; settings: {overrides or 'defaults'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bench = Bench(args, workdir, overrides)
        for name in chosen:
            started = time.perf_counter()
            try:
                SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001 — one broken scenario does not hide the others' figures
                bench.goal(name, "scenario ran", f"error: {exc!s:.300}", False)
            print(f"  [{name}] done in {time.perf_counter() - started:.0f} s", flush=True)
    width = max((len(g.goal) for g in bench.goals), default=10)
    print(f"\ngoals{' (at scale ' + format(args.scale, 'g') + ': indications only)' if args.scale != 1 else ''}:")
    for g in bench.goals:
        mark = "reported" if g.met is None else "met" if g.met else "NOT met"
        print(f"  {g.scenario:24s} {g.goal:{width}s}  {mark:8s}  {g.measured}")


if __name__ == "__main__":
    main()
