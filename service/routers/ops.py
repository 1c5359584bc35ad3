"""Operations endpoints: liveness, readiness, Prometheus metrics (no authentication)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.responses import Response

from service.deps import ComputeLimiterDep, EngineDep, MetricsDep, SettingsDep, StorageDep, WarmDep
from service.openapi_doc import problem
from service.problems import ProblemError
from service.responses import ORJSONResponse
from service.settings import Settings
from service.storage.state import Storage

router = APIRouter(tags=["operations"], default_response_class=ORJSONResponse)


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


@router.get("/healthz", operation_id="getHealth", response_model=Health)
async def healthz() -> Health:
    """The process is alive and its event loop answers."""
    return Health(status="ok")


def _store_check(settings: Settings, store: Storage) -> str:
    data_dir = settings.data_dir
    os.makedirs(data_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".ready-"):
        pass
    store.db.ping()
    return "ok"


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def _disk_check(settings: Settings) -> str:
    """How full the data directory's filesystem is; 503 above ``NTK_STORE_MAX_USED_FRACTION``."""
    limit = settings.store_max_used_fraction
    usage = shutil.disk_usage(settings.data_dir)
    used = usage.used / max(1, usage.used + usage.free)  # as df: blocks reserved for root count as neither
    state = f"{used:.1%} used, {usage.free} bytes ({_gib(usage.free)}) free of {_gib(usage.total)}"
    if used > limit:
        raise ProblemError(
            503, f"The data store is nearly full: {state}; not ready above {limit * 100:g}% "
            "(NTK_STORE_MAX_USED_FRACTION). Free space: delete datasets, models or jobs.",
            slug="not-ready", headers={"Retry-After": "5"},
            errors=[{"loc": ["store", "disk"], "msg": f"{state}; the limit is {limit * 100:g}% used"}])
    return f"ok ({state}; not ready above {limit * 100:g}%)"


@router.get(
    "/readyz", operation_id="getReadiness", response_model=Readiness,
    responses={503: problem("A dependency (store or compute engine) is not reachable, or the data store is "
                            "fuller than NTK_STORE_MAX_USED_FRACTION.")},
)
async def readyz(settings: SettingsDep, store: StorageDep, engine: EngineDep, limiter: ComputeLimiterDep,
                 warm_up: WarmDep) -> Readiness:
    """The data store is writable and not nearly full, and the compute engine accepts work."""
    checks: dict[str, str] = {}
    try:
        checks["store"] = _store_check(settings, store)
        checks["disk"] = _disk_check(settings)  # a nearly full store is a 503 of its own (not caught here)
    except (OSError, sqlite3.Error) as exc:
        raise ProblemError(503, f"The data store is not usable: {exc}", slug="not-ready",
                           headers={"Retry-After": "5"}) from None
    if engine.started or settings.dask_address:
        try:
            workers = await asyncio.wait_for(engine.workers(), timeout=30)
        except Exception as exc:  # noqa: BLE001 — any failure to reach the engine means not ready
            raise ProblemError(503, f"The compute engine is not reachable: {exc!r}", slug="not-ready",
                               headers={"Retry-After": "5"}) from None
        checks["engine"] = f"ok ({len(workers)} Dask workers)"
    else:
        checks["engine"] = "ok (embedded cluster, starts with the first job)"
    warm = "" if warm_up.is_set() else ", kernel engine still compiling"
    checks["compute"] = f"ok ({limiter.borrowed_tokens}/{int(limiter.total_tokens)} threads busy{warm})"
    return Readiness(status="ready", checks=checks)


@router.get(
    "/metrics", operation_id="getMetrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    response_class=Response,
)
async def metrics(collectors: MetricsDep) -> Response:
    """Prometheus text format: request counts and latencies by route and status."""
    return Response(generate_latest(collectors.registry), media_type=CONTENT_TYPE_LATEST)
