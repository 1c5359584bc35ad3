"""``/v1/datasets``: upload (``.npy``), list, read, delete. Owned by the caller's API key."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Query, Request
from starlette.responses import Response

from service.auth import Owner
from service.deps import StorageDep
from service.npy import NPY_MEDIA_TYPE
from service.pagination import page
from service.problems import INSUFFICIENT_STORAGE, ProblemError
from service.resources import IdempotencyKey, created, not_found_response, owned
from service.routing import PageLimit, PageToken, v1_router
from service.schemas.datasets import DatasetList, DatasetOut
from service.storage.datasets import Dataset

router = v1_router("datasets")
NOT_FOUND = not_found_response("dataset")


def _out(d: Dataset) -> DatasetOut:
    return DatasetOut(id=d.id, name=d.name, shape=list(d.shape), dtype=d.dtype, sha256=d.sha256,  # type: ignore[arg-type]
                      bytes=d.bytes, created_at=d.created_at)


def _created(dataset: Dataset) -> Response:
    return created(_out(dataset), f"/v1/datasets/{dataset.id}")


@router.post(
    "/datasets", operation_id="createDataset", status_code=201, response_model=DatasetOut,
    responses=INSUFFICIENT_STORAGE,
    openapi_extra={"requestBody": {"required": True, "description": "One array saved with numpy.save "
                                   "(float32/float64, 1-d to 4-d, finite): targets, n × d inputs, or "
                                   "n × L × C / n × H × W × C inputs of convolutional networks.",
                                   "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}},
)
async def create_dataset(
    request: Request, owner: Owner, store: StorageDep, idempotency_key: IdempotencyKey = None,
    name: Annotated[str | None, Query(max_length=200, description="A label of your choosing.")] = None,
) -> Response:
    """Upload one ``.npy`` array (streamed to disk, validated, never unpickled)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != NPY_MEDIA_TYPE:
        raise ProblemError(415, f"Upload the array as {NPY_MEDIA_TYPE} (numpy.save bytes), not {content_type!r}.",
                           slug="unsupported-media-type")
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
    remember = None if idempotency_key is None else (
        lambda d: store.idempotency.remember(owner, "datasets", idempotency_key, fingerprint, d.id))
    dataset = store.datasets.commit(tmp, header, sha256, size, owner, name, on_commit=remember)
    return _created(dataset)


@router.get("/datasets", operation_id="listDatasets", response_model=DatasetList)
async def list_datasets(
    owner: Owner, store: StorageDep,
    limit: PageLimit = 20, page_token: PageToken = None,
) -> DatasetList:
    """The caller's datasets, newest first."""
    datasets = store.datasets
    rows, token = page(lambda n, before: datasets.list(owner, n, before), lambda d: d.seq, limit, page_token)
    return DatasetList(items=[_out(d) for d in rows], next_page_token=token)


@router.get("/datasets/{dataset_id}", operation_id="getDataset", response_model=DatasetOut, responses=NOT_FOUND)
async def get_dataset(dataset_id: str, owner: Owner, store: StorageDep) -> DatasetOut:
    """One dataset's metadata."""
    return _out(owned("dataset", store.datasets.get, owner, dataset_id))


@router.delete("/datasets/{dataset_id}", operation_id="deleteDataset", status_code=204, responses=NOT_FOUND,
               response_class=Response)
async def delete_dataset(dataset_id: str, owner: Owner, store: StorageDep) -> Response:
    """Remove the dataset and its file."""
    store.datasets.delete(owned("dataset", store.datasets.get, owner, dataset_id))
    return Response(status_code=204)
