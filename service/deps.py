"""The app's collaborators as FastAPI dependencies.

``create_app`` puts them on ``app.state``; this module is where routers get them, each read
from there in one place::

    async def endpoint(settings: SettingsDep, store: StorageDep, jobs: RunnerDep) -> ...

The accessors are ``async`` so that FastAPI calls them on the event loop (a plain ``def``
dependency would take a worker thread per request). The admission controller is not among them:
the route class (``service.routing.NTKRoute``) uses it before the body is read, before any
dependency runs.
"""

from __future__ import annotations

import threading
from typing import Annotated

import anyio
from fastapi import Depends, Request

from service.jobs.engine import ComputeEngine
from service.jobs.runner import JobRunner
from service.observability import Metrics
from service.settings import Settings
from service.storage.state import Storage


async def app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def app_storage(request: Request) -> Storage:
    return request.app.state.storage


async def app_runner(request: Request) -> JobRunner:
    return request.app.state.runner


async def app_engine(request: Request) -> ComputeEngine:
    return request.app.state.engine


async def app_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def app_compute_limiter(request: Request) -> anyio.CapacityLimiter:
    return request.app.state.compute_limiter


async def app_warm(request: Request) -> threading.Event:
    return request.app.state.warm


SettingsDep = Annotated[Settings, Depends(app_settings)]
StorageDep = Annotated[Storage, Depends(app_storage)]
RunnerDep = Annotated[JobRunner, Depends(app_runner)]
EngineDep = Annotated[ComputeEngine, Depends(app_engine)]
MetricsDep = Annotated[Metrics, Depends(app_metrics)]
ComputeLimiterDep = Annotated[anyio.CapacityLimiter, Depends(app_compute_limiter)]
#: Set once the kernel engine is compiled (start-up warm-up).
WarmDep = Annotated[threading.Event, Depends(app_warm)]
