"""``/v1/datasets``: upload (``.npy``), list, read, delete. Owned by the caller's API key."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Header, Query, Request
from starlette.responses import Response

from service.auth import Owner
from service.npy import NPY_MEDIA_TYPE
from service.openapi_doc import problem
from service.pagination import page
from service.problems import ProblemError
from service.responses import ORJSONResponse
from service.routers.v1 import v1_router
from service.schemas.datasets import DatasetList, DatasetOut
from service.storage.datasets import Dataset
from service.storage.state import Storage

router = v1_router("datasets")
NOT_FOUND = {404: problem("No such dataset for this API key.")}
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                              description="Retry-safe creation: same key and body → same dataset.")]


def _out(d: Dataset) -> DatasetOut:
    return DatasetOut(id=d.id, name=d.name, shape=list(d.shape), dtype=d.dtype, sha256=d.sha256,  # type: ignore[arg-type]
                      bytes=d.bytes, created_at=d.created_at)


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _get(request: Request, owner: str, dataset_id: str) -> Dataset:
    dataset = _storage(request).datasets.get(owner, dataset_id)
    if dataset is None:
        raise ProblemError(404, f"No dataset {dataset_id!r} for this API key.", slug="not-found")
    return dataset


def _created(dataset: Dataset) -> Response:
    return ORJSONResponse(_out(dataset), status_code=201, headers={"Location": f"/v1/datasets/{dataset.id}"})


@router.post(
    "/datasets", operation_id="createDataset", status_code=201, response_model=DatasetOut,
    openapi_extra={"requestBody": {"required": True, "description": "One array saved with numpy.save "
                                   "(float32/float64, 1-d or 2-d, finite).",
                                   "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def create_dataset(
    request: Request, owner: Owner, idempotency_key: IdempotencyKey = None,
    name: Annotated[str | None, Query(max_length=200, description="A label of your choosing.")] = None,
) -> Response:
    """Upload one ``.npy`` array (streamed to disk, validated, never unpickled)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != NPY_MEDIA_TYPE:
        raise ProblemError(415, f"Upload the array as {NPY_MEDIA_TYPE} (numpy.save bytes), not {content_type!r}.",
                           slug="unsupported-media-type")
    store = _storage(request)
    tmp, header, sha256, size = await store.datasets.ingest(request.stream())
    if idempotency_key is not None:
        fingerprint = hashlib.sha256(f"{sha256}\0{name}".encode()).hexdigest()
        try:
            earlier = store.idempotency.lookup(owner, "datasets", idempotency_key, fingerprint)
        except ProblemError:
            tmp.unlink(missing_ok=True)
            raise
        existing = store.datasets.get(owner, earlier) if earlier else None
        if existing is not None:
            tmp.unlink(missing_ok=True)
            return _created(existing)
    dataset = store.datasets.commit(tmp, header, sha256, size, owner, name)
    if idempotency_key is not None:
        store.idempotency.remember(owner, "datasets", idempotency_key, fingerprint, dataset.id)
    return _created(dataset)


@router.get("/datasets", operation_id="listDatasets", response_model=DatasetList)
async def list_datasets(
    request: Request, owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20, page_token: Annotated[str | None, Query(max_length=100)] = None,
) -> DatasetList:
    """The caller's datasets, newest first."""
    store = _storage(request).datasets
    rows, token = page(lambda n, before: store.list(owner, n, before), lambda d: d.seq, limit, page_token)
    return DatasetList(items=[_out(d) for d in rows], next_page_token=token)


@router.get("/datasets/{dataset_id}", operation_id="getDataset", response_model=DatasetOut, responses=NOT_FOUND)
async def get_dataset(dataset_id: str, request: Request, owner: Owner) -> DatasetOut:
    """One dataset's metadata."""
    return _out(_get(request, owner, dataset_id))


@router.delete("/datasets/{dataset_id}", operation_id="deleteDataset", status_code=204, responses=NOT_FOUND,
               response_class=Response)
async def delete_dataset(dataset_id: str, request: Request, owner: Owner) -> Response:
    """Remove the dataset and its file."""
    _storage(request).datasets.delete(_get(request, owner, dataset_id))
    return Response(status_code=204)
