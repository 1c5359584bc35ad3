"""Runs jobs: submits their Dask tasks, follows them to the end, and keeps the ledger current.

Resumable by construction: a gram job's tasks are keyed ``<job>-tile-<i>`` and skip tiles
whose done-marker exists, so :meth:`JobRunner.resume` after an API restart resubmits only the
missing tiles; an iterative solver's driver (``<job>-driver``, :mod:`service.jobs.solvers`)
warm-starts from its checkpoint and cached tiles. Shutting the API down leaves running jobs
``running`` for the next start.

Progress: gram jobs count tiles; iterative solvers report iterations through the job folder's
``progress.json``, which the runner copies into the ledger every :data:`PROGRESS_POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.kernels.spec import KernelSpec
from core.tiling import plan_tiles
from service.jobs.engine import ComputeEngine
from service.jobs.ledger import ACTIVE, Job, JobLedger
from service.jobs.results import TRAJECTORY_DOCUMENT
from service.jobs.solvers import ITERATIVE, PROGRESS, EngineLimits, fit_driver, trajectory_driver
from service.jobs.tasks import (
    CANCEL_FLAG,
    TaskFailed,
    fit_task,
    gram_tile,
    trajectory_task,
)
from service.observability import logger
from service.problems import job_failed
from service.storage.models import ModelStore
from service.storage.state import Storage

#: Seconds between two reads of an iterative job's progress file.
PROGRESS_POLL = 0.25
#: Longest wait for a stopped job's running tasks (they see the cancel flag within about one tile).
DRAIN_TIMEOUT = 120


def iterative(job: Job) -> bool:
    """Whether the job runs as a driver of an iterative solver (cg, nystrom, krylov)."""
    return job.plan.get("solver") in ITERATIVE


class JobRunner:
    def __init__(self, storage: Storage, engine: ComputeEngine, spec_of: Any) -> None:
        """``spec_of(job)`` rebuilds the core kernel spec from the job's stored request."""
        self.storage = storage
        self.engine = engine
        self.root = storage.data_dir / "jobs"
        self.spec_of = spec_of
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, list[Any]] = {}  # the Dask futures of each job being followed

    @property
    def ledger(self) -> JobLedger:
        return self.storage.jobs

    @property
    def models(self) -> ModelStore:
        return self.storage.models

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def launch(self, job: Job) -> None:
        self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"ntk-{job.id}")
        self._tasks[job.id].add_done_callback(lambda _: self._tasks.pop(job.id, None))

    async def resume(self) -> int:
        """Relaunch every job the ledger says is queued or running (after a restart)."""
        jobs = self.ledger.active()
        for job in jobs:
            if job.id not in self._tasks:
                logger.info("resuming job", extra={"job_id": job.id})
                self.launch(job)
        return len(jobs)

    async def _run(self, job: Job) -> None:
        try:
            client = await self.engine.client()
            self.ledger.start(job.id)
            handler = {"gram": self._gram, "fit": self._fit, "trajectory": self._trajectory}[job.type]
            result = await handler(client, job)
            if result is None:  # a driver that saw the cancel flag
                self.ledger.finish(job.id, "cancelled")
            else:
                self.ledger.finish(job.id, "succeeded", result=result)
        except TaskFailed as exc:
            self.ledger.finish(job.id, "failed", error=json.loads(str(exc)))
        except asyncio.CancelledError:
            raise  # API shutdown or a cancel request: the ledger says which
        except Exception as exc:  # noqa: BLE001 — any other failure ends the job, never leaves it stuck
            logger.exception("job failed", extra={"job_id": job.id})
            self.ledger.finish(job.id, "failed", error=job_failed(f"{type(exc).__name__}: {exc}"))
        if iterative(job):  # finished (a shutdown's CancelledError skips this: the job resumes with its cache)
            await asyncio.to_thread(self._remove_cache, job)

    async def _follow(self, client: Any, futures: list[Any], done: int, total: int, job: Job) -> list[Any]:
        """Await ``futures`` as they complete, reporting progress.

        On failure the job is flagged and its tiles drained (see :meth:`_drain`); on cancellation
        the futures stay in ``_inflight`` for :meth:`cancel` to drain (at shutdown they go with
        the engine, and the job resumes at the next start).
        """
        from distributed import as_completed

        self._inflight[job.id] = futures
        results = []
        try:
            async for future in as_completed(futures):
                value = await future
                results.append(value)
                if value != -1:
                    done += 1
                    self.ledger.progress(job.id, done / total)
        except asyncio.CancelledError:
            raise
        except BaseException:
            (self.folder(job.id) / CANCEL_FLAG).touch()
            await self._drain(client, job)
            raise
        self._inflight.pop(job.id, None)
        return results

    async def _drain(self, client: Any, job: Job) -> None:
        """Release a stopped job's tasks once those already running have returned.

        Dask cannot interrupt a running task; a gram tile that sees the cancel flag returns at once,
        so this waits about one tile, after which nothing writes into the job folder any more
        (deleting it is then safe). Fit and trajectory tasks are released without waiting.
        """
        from distributed import wait

        futures = self._inflight.pop(job.id, [])
        if job.type == "gram" or iterative(job):
            with contextlib.suppress(Exception):
                await wait(futures, timeout=DRAIN_TIMEOUT)
        await client.cancel(futures)

    def _resources(self, job: Job) -> dict[str, float] | None:
        return {"GPU": 1} if job.plan.get("device") == "gpu" else None

    async def _gram(self, client: Any, job: Job) -> dict[str, Any]:
        plan, folder = job.plan, self.folder(job.id)
        spec: KernelSpec = self.spec_of(job)
        tiles = plan_tiles(plan["n1"], plan["n2"], plan["tile"])
        missing = [t for t in tiles if not (folder / "done" / str(t.index)).exists()]
        futures = [
            client.submit(gram_tile, str(folder), plan["x1"], plan["x2"], spec, plan["outputs"], plan["dtype"],
                          (t.index, t.rows, t.cols, t.diagonal), plan["device"], key=f"{job.id}-tile-{t.index}",
                          resources=self._resources(job), retries=1)
            for t in missing
        ]
        await self._follow(client, futures, len(tiles) - len(missing), len(tiles), job)
        return {"outputs": plan["outputs"], "shape": [plan["n1"], plan["n2"] or plan["n1"]]}

    async def _fit(self, client: Any, job: Job) -> dict[str, Any] | None:
        plan = job.plan
        staging = self.models.staging_folder(plan["model_id"])
        shutil.rmtree(staging, ignore_errors=True)
        if iterative(job):
            fitted = await self._drive(client, job, fit_driver, str(self.folder(job.id)), self.spec_of(job), plan,
                                       str(staging), self._limits())
            return None if fitted is None else self._register(job, fitted)
        future = client.submit(fit_task, self.spec_of(job), plan["which"], plan["paths"], plan["ridge"],
                               plan["ridge_mode"], str(staging), key=f"{job.id}-fit",
                               resources=self._resources(job), retries=1)
        (fitted,) = await self._follow(client, [future], 0, 1, job)
        return self._register(job, fitted)

    def _register(self, job: Job, fitted: dict[str, Any]) -> dict[str, Any] | None:
        """Make the staged model visible, unless the job was cancelled meanwhile (then ``None``)."""
        plan = job.plan
        if self.ledger.require(job.id).status not in ACTIVE:
            shutil.rmtree(self.models.staging_folder(plan["model_id"]), ignore_errors=True)
            return None
        meta = {**plan["model_meta"], **fitted}
        model = self.models.register(plan["model_id"], job.owner, meta)
        return {"model_id": model.id}

    async def _trajectory(self, client: Any, job: Job) -> dict[str, Any] | None:
        plan = job.plan
        folder = str(self.folder(job.id))
        if iterative(job):
            if await self._drive(client, job, trajectory_driver, folder, self.spec_of(job), plan,
                                 self._limits()) is None:
                return None
        else:
            future = client.submit(trajectory_task, self.spec_of(job), plan["which"], plan["paths"], plan["options"],
                                   folder, key=f"{job.id}-trajectory", resources=self._resources(job), retries=1)
            await self._follow(client, [future], 0, 1, job)
        return {"path": TRAJECTORY_DOCUMENT}

    def _limits(self) -> EngineLimits:
        settings = self.engine.settings
        return EngineLimits(settings.job_tile_bytes, settings.job_tile, settings.solver_cache_bytes)

    async def _drive(self, client: Any, job: Job, driver: Callable[..., Any], *args: Any) -> Any:
        """Run a solver's driver task (one attempt at a time; Dask runs it again if its worker dies),
        copying its progress file into the ledger while it runs. Its result, or ``None`` if cancelled."""
        future = client.submit(driver, *args, key=f"{job.id}-driver", pure=False)
        self._inflight[job.id] = [future]
        progress = self.folder(job.id) / PROGRESS

        async def result() -> Any:
            return await future

        waiter = asyncio.ensure_future(result())
        seen = None
        try:
            while True:
                finished, _ = await asyncio.wait({waiter}, timeout=PROGRESS_POLL)
                seen = self._copy_progress(job, progress, seen)
                if finished:
                    break
            value = waiter.result()
        except asyncio.CancelledError:
            waiter.cancel()
            raise
        except BaseException:
            (self.folder(job.id) / CANCEL_FLAG).touch()  # its tile tasks stop at once
            await self._drain(client, job)
            raise
        self._inflight.pop(job.id, None)
        return value

    def _copy_progress(self, job: Job, path: Path, seen: Any) -> Any:
        """Copy ``progress.json`` into the ledger when it changed; returns what was seen."""
        try:
            stat = path.stat()
            if (stat.st_mtime_ns, stat.st_size) == seen:
                return seen
            fraction = float(json.loads(path.read_text())["fraction"])
        except (OSError, ValueError, KeyError, TypeError):
            return seen
        self.ledger.progress(job.id, fraction)
        return stat.st_mtime_ns, stat.st_size

    def _remove_cache(self, job: Job) -> None:
        """The tile cache of an iterative job that ended (it may be gigabytes)."""
        shutil.rmtree(self.folder(job.id) / "cache", ignore_errors=True)

    async def cancel(self, job: Job) -> bool:
        """Stop a job: flag it (tiles check before writing), mark it cancelled, stop following it, and
        return once its running tiles have (about one tile's time)."""
        folder = self.folder(job.id)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CANCEL_FLAG).touch()
        changed = self.ledger.finish(job.id, "cancelled")
        task = self._tasks.get(job.id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.engine.started:
            await self._drain(await self.engine.client(), job)
        if iterative(job):
            await asyncio.to_thread(self._remove_cache, job)
        return changed

    async def shutdown(self) -> None:
        """Stop following jobs (they stay ``running`` in the ledger and resume at the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
