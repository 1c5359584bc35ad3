"""The multi-process topology of docker-compose.yml, run natively: API (uvicorn), a Dask
scheduler and two Dask workers as separate processes sharing one data directory."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import pytest

from core import kernels as core_kernels
from tests.api.test_kernels import RELU3, RELU3_CORE
from tests.integration.conftest import npy

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[str]:
    """Scheduler, two workers, API; each process logs to <tmp_path>/<name>.log."""
    scheduler_port, api_port = free_port(), free_port()
    address = f"tcp://127.0.0.1:{scheduler_port}"
    env = {**os.environ, "NTK_DATA_DIR": str(tmp_path), "NTK_DASK_ADDRESS": address, "NTK_JOB_TILE": "24",
           "NTK_LOG_LEVEL": "WARNING"}
    commands = {
        "scheduler": [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(scheduler_port),
                      "--no-dashboard"],
        **{name: [str(BIN / "dask"), "worker", address, "--name", name, "--nthreads", "1", "--no-dashboard",
                  "--memory-limit", "2GiB"] for name in ("worker-a", "worker-b")},
        "api": [sys.executable, "-m", "service", "serve", "--port", str(api_port)],
    }
    procs = []
    with ExitStack() as logs:
        try:
            for name, command in commands.items():
                log = logs.enter_context(open(tmp_path / f"{name}.log", "wb"))
                procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            base = f"http://127.0.0.1:{api_port}"
            wait_until(lambda: httpx.get(f"{base}/readyz", timeout=30).json()["checks"]["engine"]
                       .startswith("ok (2"), 90, "the API to see both workers")
            yield base
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_gram_job_across_two_external_workers(topology: str, tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(240, 5))
    with httpx.Client(base_url=topology, timeout=60) as client:
        dataset = client.post("/v1/datasets", content=npy(x), headers={"content-type": "application/x-npy"}).json()
        job = client.post("/v1/jobs", json={"type": "gram", "kernel": {"type": "network", "layers": RELU3},
                                            "x1": dataset["id"], "outputs": ["ntk"]}).json()
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] in ("succeeded", "failed"), 120,
                   "the job")
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded", client.get(f"/v1/jobs/{job['id']}").text
        result = np.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/result").content), allow_pickle=False)
    np.testing.assert_allclose(result, core_kernels.gram(RELU3_CORE, x, outputs=["ntk"])["ntk"], rtol=1e-12)
    workers = {p.read_text() for p in (tmp_path / "jobs" / job["id"] / "done").iterdir()}
    assert len(workers) == 2, f"tiles were computed by {workers}"
