"""The ASGI application factory."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from core import kernels as core_kernels
from service.bodies import BodyParser
from service.compute import AdmissionController
from service.errors import install_error_handlers
from service.jobs.engine import ComputeEngine
from service.jobs.runner import JobRunner
from service.middleware import RequestContextMiddleware
from service.observability import Metrics
from service.openapi_doc import DESCRIPTION, build_openapi
from service.resources import job_spec
from service.responses import ORJSONResponse
from service.routers import (
    datasets,
    empirical,
    experiments,
    jobs,
    kernels,
    models,
    ops,
    spectra,
    trajectories,
)
from service.routing import METHODS_STATE_KEY, route_methods
from service.settings import Settings, get_settings
from service.storage.faults import remove_stale_temporaries
from service.storage.state import Storage

API_VERSION = "1.0.0"


def _warm_up(done: threading.Event) -> None:
    core_kernels.warm_up()
    gc.freeze()  # start-up's objects live for ever: keep them out of full collections (~0.1 s of GIL each)
    done.set()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. ``settings`` default to the ``NTK_*`` environment."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # what a crashed process left half-written (uploads, staged models); never jobs/
        await anyio.to_thread.run_sync(remove_stale_temporaries, settings.data_dir, time.time())
        if not app.state.warm.is_set():  # compile the kernel engine before the first request needs it
            threading.Thread(target=_warm_up, args=(app.state.warm,), name="ntk-warm-up", daemon=True).start()
        if app.state.storage.jobs.active():  # resume what a previous process left running
            await app.state.runner.resume()
        gc.freeze()  # as in _warm_up: a full collection then scans only what requests allocate
        yield
        await app.state.runner.shutdown()
        await app.state.engine.close()
        app.state.storage.close()
        app.state.body_parser.drop()

    app = FastAPI(
        title="NTK service",
        version=API_VERSION,
        description=DESCRIPTION,
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        # one schema per model (requests and responses share the kernel specification): no
        # "-Input"/"-Output" twins in generated SDKs
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.storage = Storage(settings.data_dir)
    app.state.engine = ComputeEngine(settings)
    # built here with the other collaborators, not in the lifespan: an app driven without its
    # lifespan (some tests, schemathesis) still runs jobs; the lifespan resumes and stops them
    app.state.runner = JobRunner(app.state.storage, app.state.engine, job_spec)
    app.state.warm = threading.Event()
    app.state.compute_limiter = anyio.CapacityLimiter(settings.compute_threads)
    app.state.admission = AdmissionController(  # synchronous compute: slots, bounded queue, 503 beyond
        settings.compute_threads, settings.compute_queue, settings.compute_queue_bytes,
        settings.compute_queue_timeout, app.state.metrics)
    app.state.body_parser = BodyParser(settings.compute_threads)  # large JSON bodies, off the event loop
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, metrics=app.state.metrics,
        upload_limits={"/v1/datasets": ("max_dataset_bytes", settings.max_dataset_bytes)},
    )
    routers = [module.router for module in (ops, kernels, empirical, models, trajectories, spectra, experiments,
                                            datasets, jobs)]
    for router in routers:
        app.include_router(router)
    setattr(app.state, METHODS_STATE_KEY, route_methods(routers))  # for the Allow of 405 answers
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app
