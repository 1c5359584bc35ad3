"""Datasets: safe .npy uploads, idempotency, pagination, ownership."""

from __future__ import annotations

import io
import pickle

import httpx
import numpy as np
import pytest

from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio
NPY = {"content-type": "application/x-npy"}


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


async def upload(client: httpx.AsyncClient, data: bytes, **kwargs) -> httpx.Response:
    headers = {**NPY, **kwargs.pop("headers", {})}
    return await client.post("/v1/datasets", content=data, headers=headers, **kwargs)


async def test_upload_read_list_delete(client: httpx.AsyncClient, settings) -> None:
    x = np.random.default_rng(0).normal(size=(5, 3))
    data = npy_bytes(x)
    created = await upload(client, data, params={"name": "train"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["shape"] == [5, 3] and body["dtype"] == "float64" and body["name"] == "train"
    assert body["bytes"] == len(data)
    assert created.headers["location"] == f"/v1/datasets/{body['id']}"
    stored = np.load(settings.data_dir / "datasets" / f"{body['id']}.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, x)
    assert (await client.get(f"/v1/datasets/{body['id']}")).json() == body
    assert [d["id"] for d in (await client.get("/v1/datasets")).json()["items"]] == [body["id"]]
    assert (await client.delete(f"/v1/datasets/{body['id']}")).status_code == 204
    assert_problem(await client.get(f"/v1/datasets/{body['id']}"), 404)
    assert not list((settings.data_dir / "datasets").iterdir())


async def test_float32_big_endian_and_fortran_order_are_accepted(client: httpx.AsyncClient) -> None:
    for array in (np.ones((2, 2), np.float32), np.ones(4, ">f8"), np.asfortranarray(np.arange(6.0).reshape(2, 3))):
        response = await upload(client, npy_bytes(array))
        assert response.status_code == 201, response.text


def _pickled() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "header truncated"),
        (b"not numpy at all", "bad magic"),
        (pickle.dumps([1.0, 2.0]), "bad magic"),
        (_pickled(), "dtype |O is not allowed"),
        (npy_bytes(np.ones((2, 2)))[:-8], "promises 32 data bytes"),
        (npy_bytes(np.ones((2, 2))) + b"extra", "longer than"),
        (npy_bytes(np.ones((2, 2)))[:20], "header truncated"),
        (npy_bytes(np.array([1.0, np.nan])), "NaN or Infinity"),
        (npy_bytes(np.array([np.inf], np.float32)), "NaN or Infinity"),
        (npy_bytes(np.ones((2, 1, 2, 2, 2))), "5 dimensions"),
        (npy_bytes(np.ones(3, np.int64)), "float32 or float64"),
        (npy_bytes(np.zeros((0, 3))), "empty"),
        (npy_bytes(np.zeros(3, dtype=[("a", "<f8")])), "not allowed"),
    ],
)
async def test_hostile_uploads_are_refused(client: httpx.AsyncClient, settings, payload: bytes, fragment: str) -> None:
    body = assert_problem(await upload(client, payload), 422)
    assert fragment in body["detail"]
    assert (await client.get("/v1/datasets")).json()["items"] == []
    assert [p.name for p in (settings.data_dir / "datasets").iterdir()] == []


async def test_header_promising_more_than_sent(client: httpx.AsyncClient) -> None:
    data = npy_bytes(np.ones((1000, 1000), np.float32))[:4096]
    assert "promises 4000000 data bytes" in assert_problem(await upload(client, data), 422)["detail"]


async def test_upload_needs_npy_content_type(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/datasets", content=npy_bytes(np.ones(2)), headers={"content-type": "text/csv"})
    assert_problem(response, 415)


async def test_idempotency_key(client: httpx.AsyncClient) -> None:
    data = npy_bytes(np.ones((3, 2)))
    first = await upload(client, data, headers={"Idempotency-Key": "k1"})
    again = await upload(client, data, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert len((await client.get("/v1/datasets")).json()["items"]) == 1
    other = await upload(client, npy_bytes(np.zeros((3, 2))), headers={"Idempotency-Key": "k1"})
    assert "different request body" in assert_problem(other, 422)["detail"]
    assert len((await client.get("/v1/datasets")).json()["items"]) == 1


async def test_pagination_newest_first(client: httpx.AsyncClient) -> None:
    ids = [(await upload(client, npy_bytes(np.full(2, float(i))))).json()["id"] for i in range(5)]
    seen, token = [], None
    while True:
        params = {"limit": 2} | ({"page_token": token} if token else {})
        page = (await client.get("/v1/datasets", params=params)).json()
        seen += [d["id"] for d in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == ids[::-1]
    assert_problem(await client.get("/v1/datasets", params={"page_token": "garbage!"}), 422)
    assert_problem(await client.get("/v1/datasets", params={"limit": 0}), 422)


@pytest.mark.parametrize("dataset_id", ["..%2F..%2Fetc%2Fpasswd", "ds_..", "ds_" + "0" * 24, "%00", "x" * 300])
async def test_path_like_or_unknown_ids_are_404(client: httpx.AsyncClient, dataset_id: str) -> None:
    assert_problem(await client.get(f"/v1/datasets/{dataset_id}"), 404)
    assert_problem(await client.delete(f"/v1/datasets/{dataset_id}"), 404)
