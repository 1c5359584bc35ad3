"""``/v1/jobs``: large Gram matrices, fits and trajectories on Dask, tracked in the ledger."""

from __future__ import annotations

import shutil
from typing import Annotated, Any, get_args

import anyio
from fastapi import Header, Query, Request
from starlette.responses import FileResponse, Response

from service.auth import Owner
from service.compute import run_compute
from service.deps import EngineDep, RunnerDep, SettingsDep, StorageDep
from service.jobs.engine import ComputeEngine
from service.jobs.ledger import ACTIVE, Job, new_job_id
from service.jobs.planning import plan_gram, plan_learning
from service.jobs.results import (
    TRAJECTORY_DOCUMENT,
    create_result_files,
    open_result,
    result_response,
    trajectory_outputs,
)
from service.negotiation import negotiate
from service.npy import NPY_MEDIA_TYPE
from service.openapi_doc import problem
from service.pagination import page
from service.problems import INSUFFICIENT_STORAGE, ProblemError
from service.resources import (
    IdempotencyKey,
    created,
    earlier_creation,
    model_document,
    not_found_response,
    owned,
)
from service.responses import ORJSONResponse
from service.routing import PageLimit, PageToken, v1_router
from service.schemas.gram import OUTPUT_NAMES
from service.schemas.jobs import (
    GramJob,
    JobCreate,
    JobList,
    JobOut,
    JobStatus,
    TrajectoryArray,
)

router = v1_router("jobs")
NOT_FOUND = not_found_response("job")


def _out(job: Job) -> dict[str, Any]:
    return {"id": job.id, "type": job.type, "status": job.status, "progress": job.progress,
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "error": job.error, "links": {"self": f"/v1/jobs/{job.id}", "result": f"/v1/jobs/{job.id}/result"}}


async def _require_gpu(engine: ComputeEngine) -> None:
    if not await engine.has_gpu_worker():
        raise ProblemError(503, "This job asks for a GPU but no worker with the Dask resource GPU=1 is connected; "
                           "start a GPU worker or submit with device \"cpu\".", slug="no-gpu-worker",
                           title="No GPU worker", headers={"Retry-After": "60"})


@router.post("/jobs", operation_id="createJob", status_code=202, response_model=JobOut,
             responses={503: problem("A GPU was requested but no GPU worker is connected (see Retry-After).")}
             | INSUFFICIENT_STORAGE)
async def create_job(body: JobCreate, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
                     jobs: RunnerDep, engine: EngineDep, idempotency_key: IdempotencyKey = None) -> Response:
    """Start a ``gram``, ``fit`` or ``trajectory`` job on the Dask engine; poll ``links.self``."""
    fingerprint, existing = await earlier_creation(request, store, owner, "jobs", idempotency_key, store.jobs.get)
    if existing is not None:
        return _accepted(existing)
    job_id = new_job_id()
    folder = jobs.folder(job_id)
    try:  # the folder is complete before the ledger row exists; a refused request leaves nothing
        if isinstance(body, GramJob):  # file work (links, result arrays) off the event loop
            plan = await run_compute(request, plan_gram, settings, store, owner, body, folder)
            await run_compute(request, create_result_files, folder, plan)
        else:
            plan = await run_compute(request, plan_learning, settings, store, owner, body, folder)
        if body.device == "gpu":  # after validation: a bad request is a 422 even without GPU workers
            await _require_gpu(engine)
        job = store.jobs.create(job_id, owner, body.type, body.model_dump(mode="json", exclude_none=True), plan)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if idempotency_key is not None:
        store.idempotency.remember(owner, "jobs", idempotency_key, fingerprint, job.id)
    jobs.launch(job)
    return _accepted(job)


def _accepted(job: Job) -> Response:
    return created(_out(job), f"/v1/jobs/{job.id}", status_code=202)


@router.get("/jobs", operation_id="listJobs", response_model=JobList)
async def list_jobs(owner: Owner, store: StorageDep, limit: PageLimit = 20,
                    page_token: PageToken = None,
                    status: JobStatus | None = None) -> Response:
    """The caller's jobs, newest first, optionally only those with ``status``."""
    ledger = store.jobs
    rows, token = page(lambda n, before: ledger.list(owner, n, before, status), lambda j: j.seq, limit, page_token)
    return ORJSONResponse({"items": [_out(j) for j in rows], "next_page_token": token})


@router.get("/jobs/{job_id}", operation_id="getJob", response_model=JobOut, responses=NOT_FOUND)
async def get_job(job_id: str, owner: Owner, store: StorageDep) -> Response:
    """Status and progress (tiles done / tiles total for gram jobs)."""
    return ORJSONResponse(_out(owned("job", store.jobs.get, owner, job_id)))


@router.post("/jobs/{job_id}/cancel", operation_id="cancelJob", status_code=202, response_model=JobOut,
             responses=NOT_FOUND | {409: problem("The job has already finished.")})
async def cancel_job(job_id: str, owner: Owner, store: StorageDep, jobs: RunnerDep) -> Response:
    """Cancel a queued or running job; tiles in flight finish without writing."""
    job = owned("job", store.jobs.get, owner, job_id)
    if job.status not in ACTIVE or not await jobs.cancel(job):
        raise ProblemError(409, f"Job {job_id} has already finished ({job.status}); nothing to cancel.",
                           slug="job-finished")
    return ORJSONResponse(_out(owned("job", store.jobs.get, owner, job_id)), status_code=202)


@router.delete("/jobs/{job_id}", operation_id="deleteJob", status_code=204, responses=NOT_FOUND,
               response_class=Response)
async def delete_job(job_id: str, request: Request, owner: Owner, store: StorageDep, jobs: RunnerDep) -> Response:
    """Cancel the job if needed and remove it and its result (a fit job's model too)."""
    job = owned("job", store.jobs.get, owner, job_id)
    if job.status in ACTIVE:
        await jobs.cancel(job)
    store.jobs.delete(job.id)
    if job.type == "fit" and job.result:
        model = store.models.get(owner, job.result["model_id"])
        if model is not None:
            await run_compute(request, store.models.delete, model)
    await run_compute(request, shutil.rmtree, jobs.folder(job.id), True)
    return Response(status_code=204)


RESULT_HEADERS = {
    "ETag": {"description": "Strong entity tag of this representation (job, output, rows, result file).",
             "schema": {"type": "string"}},
    "Accept-Ranges": {"description": "`bytes` for .npy results.", "schema": {"type": "string"}},
    "Last-Modified": {"description": "When the result file was last written.", "schema": {"type": "string"}},
    "Content-Length": {"description": "Bytes in this response's body.", "schema": {"type": "integer"}},
}
RESULT_CONTENT = {
    200: {"description": "gram: the matrix (or the block `?rows=a:b`) as .npy, streamed; fit: the model; "
                         "trajectory: the trajectory document, or with `?output=` one prediction array "
                         "(times × points × outputs; `?rows=a:b` for times a:b) as .npy.",
          "headers": RESULT_HEADERS,
          "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
                      "application/json": {"schema": {"type": "object"}}}},
    206: {"description": "The one byte range asked for by `Range`, of the .npy representation above.",
          "headers": RESULT_HEADERS | {"Content-Range": {"description": "`bytes start-end/length`.",
                                                         "schema": {"type": "string"}}},
          "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}},
    409: problem("The job has not succeeded (yet)."),
    416: problem("The range selects no bytes of the representation (`Content-Range: bytes */length` gives its "
                 "length).") | {"headers": {"Content-Range": {"description": "`bytes */length`.",
                                                               "schema": {"type": "string"}}}},
}
#: ``?output=`` of a result: a gram job's matrices, or a trajectory job's prediction arrays.
RESULT_OUTPUT_PATTERN = f"^({OUTPUT_NAMES}|{'|'.join(get_args(TrajectoryArray))})$"
RangeHeader = Annotated[str | None, Header(
    alias="Range",
    description=".npy results: one byte range of the representation: `bytes=start-end`, `bytes=start-` or "
                "`bytes=-suffix_length`. Several ranges are answered with the whole representation (200).")]
IfRangeHeader = Annotated[str | None, Header(
    alias="If-Range",
    description=".npy results: honour `Range` only if the representation still has this ETag (or Last-Modified date); "
                "otherwise the whole representation is sent (200).")]


@router.get("/jobs/{job_id}/result", operation_id="getJobResult", responses=NOT_FOUND | RESULT_CONTENT,
            response_class=Response)
async def get_job_result(
    job_id: str, request: Request, owner: Owner, store: StorageDep, jobs: RunnerDep,
    rows: Annotated[str | None, Query(max_length=40, pattern=r"^[0-9]*:[0-9]*$",
                                      description="A block 'a:b' of the first axis (0 ≤ a < b; an end left out "
                                                  "is 0 or the axis length): gram rows, trajectory times.")] = None,
    output: Annotated[str | None, Query(pattern=RESULT_OUTPUT_PATTERN,
                                        description="gram: which matrix (default: the first); trajectory: "
                                                    "train_predictions or test_predictions as .npy.")] = None,
    range_: RangeHeader = None, if_range: IfRangeHeader = None,
) -> Response:
    """The result of a succeeded job (409 before).

    A gram job's result is the `.npy` of the matrix, or of the block `?rows=a:b`, of the output
    `?output=` (default the job's first): a header for that shape followed by the rows. It supports
    range requests on those bytes (`Accept-Ranges: bytes`, a strong `ETag`): `Range: bytes=a-b`,
    `bytes=a-` or `bytes=-n` gives `206` with `Content-Range` (`416` if the range selects nothing),
    so downloads resume (`curl -C -`) and run as parallel parts; `If-Range` guards a resume against a
    changed result. A multi-range request is answered with the whole representation (`200`, as RFC
    9110 allows). `HEAD` gives the headers alone.

    A trajectory job's result is its JSON document; the prediction arrays it left out (`include`)
    are `null` there. Every prediction array is also served as `.npy`, `?output=train_predictions`
    or `?output=test_predictions` (times × points × outputs, float64; `?rows=a:b` for times a:b),
    with the same range support."""
    job = owned("job", store.jobs.get, owner, job_id)
    if job.status != "succeeded":
        raise ProblemError(409, f"Job {job_id} is {job.status}; its result exists once it has succeeded.",
                           slug="job-not-finished")
    arrays = job.type == "gram" or (job.type == "trajectory" and (output is not None or rows is not None))
    wanted = NPY_MEDIA_TYPE if arrays else "application/json"
    if negotiate(request.headers.get("accept"), [wanted]) is None:
        raise ProblemError(406, f"This {job.type} job's result is {wanted}"
                           + ("" if arrays or job.type != "trajectory" else
                              "; its prediction arrays are .npy with ?output=train_predictions|test_predictions")
                           + ".", slug="not-acceptable")
    folder = jobs.folder(job.id)
    if job.type == "fit":
        model = store.models.get(owner, job.result["model_id"]) if job.result else None
        if model is None:
            raise ProblemError(404, "The model this job fitted was deleted.", slug="not-found")
        return ORJSONResponse(model_document(model.id, model.meta))
    if job.type == "trajectory" and not arrays:
        document = folder / TRAJECTORY_DOCUMENT
        if not document.is_file():
            raise ProblemError(404, f"The result of job {job.id} is missing from the store; run the job again.",
                               slug="not-found")
        return FileResponse(document, media_type="application/json")
    outputs = job.plan["outputs"] if job.type == "gram" else trajectory_outputs(
        int(job.plan["paths"].get("x_test") is not None))
    block = await anyio.to_thread.run_sync(open_result, folder, job.id, outputs, output, rows)
    return result_response(block, request.method, range_, if_range)


router.add_api_route("/jobs/{job_id}/result", get_job_result, methods=["HEAD"], include_in_schema=False,
                     response_class=Response)
