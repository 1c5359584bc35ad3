"""Storage faults: a write that does not fit is a 507 that keeps nothing; start-up removes what a
crash left half-written; /readyz reports a nearly full store.

A full disk is injected (a file object whose writes raise ``ENOSPC`` past a byte budget, a ledger
connection that answers "database or disk is full"); one test also runs on a real small tmpfs when
this machine lets us mount one (root), and is skipped otherwise.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from collections import namedtuple
from pathlib import Path
from typing import Any, Self

import anyio
import httpx
import numpy as np
import pytest

import service.storage.datasets as datasets_module
import service.storage.models as models_module
from service.app import create_app
from service.jobs import planning
from service.storage.faults import remove_stale_temporaries
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

RNG = np.random.default_rng(5)
X = RNG.normal(size=(40, 3))
Y = np.sin(X[:, 0])
FIT = {"kernel": {"type": "rbf", "lengthscale": 1.5}, "x_train": X.tolist(), "y_train": Y.tolist(), "ridge": 1e-3}
NTK_FIT = FIT | {"kernel": {"type": "two_layer_relu"}}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


async def upload(client: httpx.AsyncClient, array: np.ndarray, **headers: str) -> httpx.Response:
    return await client.post("/v1/datasets", content=npy_bytes(array),
                             headers={"content-type": "application/x-npy", **headers})


def files(root: Path) -> list[str]:
    """Every file and folder under ``root`` but the SQLite ledger (what a failed write could leave)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.name.startswith("ntk.sqlite3"))


def assert_507(response: httpx.Response, area: str) -> dict[str, Any]:
    body = assert_problem(response, 507)
    assert body["type"].endswith("/insufficient-storage")
    assert body["errors"][0]["loc"] == ["store", area]
    assert "free" in body["detail"] and "Nothing of it was kept" in body["detail"]
    return body


class SmallDisk:
    """Files opened for writing share a byte budget; a write past it writes what fits, then ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def open(self, path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 — handed to the caller
        return _Limited(handle, self) if "w" in mode or "a" in mode else handle


class _Limited:
    def __init__(self, handle: Any, disk: SmallDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data: bytes) -> int:
        room = max(0, self._disk.budget)
        self._handle.write(bytes(data[:room]))
        self._disk.budget -= len(data)
        if len(data) > room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def small_disk(monkeypatch: pytest.MonkeyPatch) -> SmallDisk:
    """Uploads (anyio.open_file) and model arrays (open in storage.models) write to a SmallDisk."""
    disk = SmallDisk(10**12)

    async def open_file(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> anyio.AsyncFile[Any]:
        return anyio.AsyncFile(disk.open(path, mode, *args, **kwargs))

    monkeypatch.setattr(datasets_module.anyio, "open_file", open_file)
    monkeypatch.setattr(models_module, "open", disk.open, raising=False)
    return disk


class _FullLedger:
    """A SQLite connection whose statements starting with ``prefix`` find the disk full."""

    def __init__(self, conn: sqlite3.Connection, prefix: str) -> None:
        self._conn, self._prefix = conn, prefix

    def execute(self, sql: str, params: Any = ()) -> Any:
        if sql.startswith(self._prefix):
            raise sqlite3.OperationalError("database or disk is full")
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def fill_ledger(monkeypatch: pytest.MonkeyPatch, app: Any, prefix: str) -> None:
    db = app.state.storage.db
    monkeypatch.setattr(db, "_conn", _FullLedger(db._conn, prefix))


# --- uploads -------------------------------------------------------------------------------------------


async def test_upload_that_fills_the_disk_is_507_and_keeps_nothing(client, settings, small_disk) -> None:
    small_disk.budget = 20_000
    body = assert_507(await upload(client, RNG.normal(size=(100, 100))), "datasets")
    assert "80128 bytes" in body["detail"]  # what did not fit (header + data)
    assert files(settings.data_dir / "datasets") == []
    assert (await client.get("/v1/datasets")).json()["items"] == []


async def test_upload_larger_than_the_free_space_is_refused_before_writing(client, settings, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5000, 5000))
    body = assert_507(await upload(client, RNG.normal(size=(100, 100))), "datasets")
    assert "5000 bytes (4.9 KiB) free" in body["detail"]
    assert files(settings.data_dir / "datasets") == []


async def test_upload_whose_ledger_record_does_not_fit_keeps_nothing(app, client, settings, monkeypatch) -> None:
    # the Idempotency-Key record is written in the same transaction as the dataset's row
    fill_ledger(monkeypatch, app, "INSERT OR REPLACE INTO idempotency")
    assert_507(await upload(client, RNG.normal(size=(4, 3)), **{"Idempotency-Key": "k1"}), "datasets")
    monkeypatch.undo()
    assert files(settings.data_dir / "datasets") == []
    assert (await client.get("/v1/datasets")).json()["items"] == []
    retry = await upload(client, RNG.normal(size=(4, 3)), **{"Idempotency-Key": "k1"})
    assert retry.status_code == 201 and len(files(settings.data_dir / "datasets")) == 1


# --- models --------------------------------------------------------------------------------------------


async def test_synchronous_fit_that_fills_the_disk_is_507_and_keeps_nothing(client, settings, small_disk) -> None:
    small_disk.budget = 8_000  # x_train and y fit, the 40 × 40 kernel does not
    body = assert_507(await client.post("/v1/models", json=FIT), "models")
    assert "the model" in body["detail"].lower()
    assert files(settings.data_dir / "models") == []  # no .mdl_… staging folder, no .x_train.npy.<hex>
    assert (await client.get("/v1/models")).json()["items"] == []


async def test_fit_larger_than_the_free_space_is_refused_before_writing(client, settings, monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    body = assert_507(await client.post("/v1/models", json=FIT), "models")
    needed = X.nbytes + 2 * Y.nbytes + 2 * 40 * 40 * 8  # x_train, y, alpha, kernel, Cholesky factor
    assert f"(needs {needed} bytes" in body["detail"] and "1000 bytes free" in body["detail"]
    assert files(settings.data_dir / "models") == []


@pytest.mark.parametrize("statement", ["INSERT INTO models", "INSERT OR REPLACE INTO idempotency"])
async def test_fit_whose_ledger_record_does_not_fit_keeps_nothing(app, client, settings, monkeypatch,
                                                                   statement) -> None:
    fill_ledger(monkeypatch, app, statement)
    assert_507(await client.post("/v1/models", json=FIT, headers={"Idempotency-Key": "m1"}), "models")
    monkeypatch.undo()
    assert files(settings.data_dir / "models") == []
    assert (await client.get("/v1/models")).json()["items"] == []
    retry = await client.post("/v1/models", json=FIT, headers={"Idempotency-Key": "m1"})
    assert retry.status_code == 201
    assert files(settings.data_dir / "models") == [retry.json()["id"]] + [
        f"{retry.json()['id']}/{name}.npy" for name in sorted(("alpha", "cholesky", "kernel", "x_train", "y"))]


async def test_lazy_extras_that_do_not_fit_stay_in_memory_and_the_request_succeeds(
        client, settings, small_disk, caplog) -> None:
    model = (await client.post("/v1/models", json=NTK_FIT)).json()
    folder = settings.data_dir / "models" / model["id"]
    stored = sorted(os.listdir(folder))
    small_disk.budget = 100  # the eigenbasis (trajectory) and the training NNGP (variance) do not fit
    with caplog.at_level(logging.WARNING, logger="ntk.service.storage"):
        first = await client.post(f"/v1/models/{model['id']}/trajectory", json={"times": [0.0, 1.0]})
        again = await client.post(f"/v1/models/{model['id']}/trajectory", json={"times": [0.0, 1.0]})
        predicted = await client.post(f"/v1/models/{model['id']}/predictions",
                                      json={"x_test": X[:3].tolist(), "variance": True, "time": 1.0})
    assert first.status_code == again.status_code == predicted.status_code == 200, predicted.text
    assert first.json() == again.json()
    assert sorted(os.listdir(folder)) == stored  # no eigenvectors.npy, nngp.npy or .<name>.npy.<hex>
    assert any("not cached on disk" in r.getMessage() for r in caplog.records)
    small_disk.budget = 10**12  # space again: the next model's extras are persisted as before
    other = (await client.post("/v1/models", json=NTK_FIT)).json()
    assert (await client.post(f"/v1/models/{other['id']}/trajectory", json={"times": [1.0]})).status_code == 200
    assert {"eigenvalues.npy", "eigenvectors.npy"} <= set(os.listdir(settings.data_dir / "models" / other["id"]))


# --- jobs (planning only: the request is refused before anything runs) --------------------------------


async def test_job_whose_inputs_or_result_do_not_fit_is_507(client, settings, monkeypatch) -> None:
    x_id = (await upload(client, RNG.normal(size=(30, 3)))).json()["id"]
    job = {"type": "gram", "kernel": {"type": "rbf", "lengthscale": 1.0}, "x1": x_id}

    def no_space(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(planning.os, "link", no_space)
        assert_507(await client.post("/v1/jobs", json=job), "jobs")
    usage = namedtuple("usage", "total used free")
    with monkeypatch.context() as patch:
        patch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
        body = assert_507(await client.post("/v1/jobs", json=job), "jobs")
        assert "needs 7200 bytes" in body["detail"]
    jobs_dir = settings.data_dir / "jobs"
    assert not jobs_dir.exists() or files(jobs_dir) == []
    assert (await client.get("/v1/jobs")).json()["items"] == []


# --- start-up clean-up ---------------------------------------------------------------------------------


async def test_startup_removes_stale_temporaries_and_nothing_else(settings, caplog) -> None:
    root = settings.data_dir
    model_id, ds_id = "mdl_" + "a" * 24, "ds_" + "b" * 24
    stale = [root / ".ready-x1", root / "datasets" / ".upload-0123abcd", root / "models" / f".{model_id[:-1]}c",
             root / "models" / model_id / ".eigenvectors.npy.9f3a"]
    kept = [root / "datasets" / f"{ds_id}.npy", root / "models" / model_id / "x_train.npy",
            root / "jobs" / "job_x" / "inputs" / "x1.npy", root / "jobs" / "job_x" / ".upload-looks-temporary"]
    staged_array = stale[2] / ".x_train.npy.1234"  # a staging folder with a half-written array in it
    for path in [*stale[:2], stale[3], staged_array, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    hour_ago = time.time() - 3600
    for path in [*stale, staged_array, *kept]:
        os.utime(path, (hour_ago, hour_ago))
    app = create_app(settings)
    with caplog.at_level(logging.INFO, logger="ntk.service.storage"):
        async with app.router.lifespan_context(app):
            pass
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert any("removed 4 stale temporaries" in r.getMessage() for r in caplog.records)


def test_temporaries_newer_than_the_process_are_kept(tmp_path: Path) -> None:
    upload_tmp = tmp_path / "datasets" / ".upload-fresh"
    upload_tmp.parent.mkdir()
    upload_tmp.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path, time.time() - 60) == []
    assert upload_tmp.exists()


# --- readiness -----------------------------------------------------------------------------------------


def fake_usage(monkeypatch: pytest.MonkeyPatch, used_fraction: float, total: int = 100 * 1024**3) -> None:
    usage = namedtuple("usage", "total used free")
    used = int(total * used_fraction)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(total, used, total - used))


async def test_readyz_reports_disk_use_and_a_nearly_full_store_is_not_ready(client, monkeypatch) -> None:
    fake_usage(monkeypatch, 0.5)
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["disk"].startswith("ok (50.0% used, 53687091200 bytes (50.00 GiB) free")
    fake_usage(monkeypatch, 0.99)
    response = await client.get("/readyz")
    body = assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert "99.0% used" in body["detail"] and "NTK_STORE_MAX_USED_FRACTION" in body["detail"]
    assert body["errors"][0]["loc"] == ["store", "disk"]


async def test_readyz_threshold_is_a_setting(settings, monkeypatch) -> None:
    fake_usage(monkeypatch, 0.99)
    app = create_app(settings.model_copy(update={"store_max_used_fraction": 1.0}))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c):
        assert (await c.get("/readyz")).status_code == 200


# --- a real small filesystem ---------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Any:
    """A 4 MiB tmpfs (skipped where mounting is not permitted)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("precheck", [True, False], ids=["refused-up-front", "disk-fills-while-writing"])
async def test_a_real_small_filesystem(settings, tmpfs, monkeypatch, precheck) -> None:
    if not precheck:  # skip the free-space pre-checks: the writes themselves hit ENOSPC
        monkeypatch.setattr(datasets_module, "free_bytes", lambda path: None)
        monkeypatch.setattr(models_module, "free_bytes", lambda path: None)
    root = tmpfs / "data"
    app = create_app(settings.model_copy(update={"data_dir": root}))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c):
        assert (await upload(c, RNG.normal(size=(10, 3)))).status_code == 201
        assert_507(await upload(c, RNG.normal(size=(800, 800))), "datasets")  # 5 MB
        x = RNG.normal(size=(600, 2))  # kernel + Cholesky: 5.8 MB
        fit = FIT | {"x_train": x.tolist(), "y_train": np.sin(x[:, 0]).tolist()}
        assert_507(await c.post("/v1/models", json=fit), "models")
        assert [p for p in files(root) if p.startswith(("datasets/.", "models/"))] == []
        assert len((await c.get("/v1/datasets")).json()["items"]) == 1
        assert (await c.get("/v1/models")).json()["items"] == []
        assert (await c.get("/readyz")).status_code == 200
        fill(root / "filler")
        assert_problem(await c.get("/readyz"), 503)
        (root / "filler").unlink()


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the filesystem is full."""
    with open(path, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
