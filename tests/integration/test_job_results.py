"""Gram job results as files: the in-place ``.npy`` layout and HTTP range requests on the ``.npy``
representation a result URL names (whole matrix, ``?rows=a:b``, ``?output=``)."""

from __future__ import annotations

import asyncio
import io
import itertools
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from core import kernels as core_kernels
from service.app import create_app
from service.jobs.results import parse_range
from service.problems import ProblemError
from service.settings import Settings
from tests.api.test_errors import assert_problem
from tests.api.test_kernels import RELU3, RELU3_CORE
from tests.integration.conftest import upload, wait_for

pytestmark = pytest.mark.anyio
X = np.random.default_rng(11).normal(size=(150, 5))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
async def client(data_dir: Path):
    app = create_app(Settings(data_dir=data_dir, dask_workers=1, job_tile=32))
    async with (app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", timeout=60) as c):
        yield c


@pytest.fixture(scope="module")
async def job(client: httpx.AsyncClient) -> str:
    """A finished symmetric gram job with two outputs (150 × 150, tiles of 32: blocks and transposes)."""
    response = await client.post("/v1/jobs", json={"type": "gram", "kernel": {"type": "network", "layers": RELU3},
                                                   "x1": await upload(client, X), "outputs": ["ntk", "nngp"]})
    assert response.status_code == 202, response.text
    assert (await wait_for(client, response.json()["id"]))["status"] == "succeeded"
    return response.json()["id"]


URLS = ["", "?rows=10:47", "?output=nngp", "?rows=100:150&output=nngp"]


async def full(client: httpx.AsyncClient, url: str) -> httpx.Response:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"].startswith('"') and response.headers["last-modified"]
    assert int(response.headers["content-length"]) == len(response.content)
    return response


async def test_the_result_is_one_npy_per_output_served_as_is(client: httpx.AsyncClient, job: str,
                                                            data_dir: Path) -> None:
    expected = core_kernels.gram(RELU3_CORE, X)
    for name in ("ntk", "nngp"):
        path = data_dir / "jobs" / job / "result" / f"{name}.npy"
        np.testing.assert_allclose(np.load(path), expected[name], rtol=1e-12)
        assert (await full(client, f"/v1/jobs/{job}/result?output={name}")).content == path.read_bytes()
    block = np.load(io.BytesIO((await full(client, f"/v1/jobs/{job}/result?rows=100:150&output=nngp")).content))
    np.testing.assert_allclose(block, expected["nngp"][100:150], rtol=1e-12)


@pytest.mark.parametrize("query", URLS)
async def test_ranges_are_slices_of_the_full_download(client: httpx.AsyncClient, job: str, query: str) -> None:
    url = f"/v1/jobs/{job}/result{query}"
    body = (await full(client, url)).content
    length = len(body)
    cases = {"bytes=0-99": (0, 99), "bytes=100-5000": (100, 5000), "bytes=120-135": (120, 135),  # across the header
             f"bytes={length - 1}-": (length - 1, length - 1), "bytes=-300": (length - 300, length - 1),
             "bytes=5000-": (5000, length - 1), f"bytes=7-{length + 1000}": (7, length - 1),
             f"bytes=-{length + 5}": (0, length - 1)}
    for header, (start, end) in cases.items():
        response = await client.get(url, headers={"range": header})
        assert response.status_code == 206, (header, response.text)
        assert response.headers["content-range"] == f"bytes {start}-{end}/{length}"
        assert int(response.headers["content-length"]) == end - start + 1
        assert response.content == body[start:end + 1], header


async def test_unsatisfiable_ignored_and_conditional_ranges(client: httpx.AsyncClient, job: str) -> None:
    url = f"/v1/jobs/{job}/result?rows=10:47"
    whole = await full(client, url)
    length, etag = len(whole.content), whole.headers["etag"]
    for header in (f"bytes={length}-", "bytes=-0", "bytes=9-3"):
        response = await client.get(url, headers={"range": header})
        assert_problem(response, 416)
        assert response.headers["content-range"] == f"bytes */{length}"
    for header in ("bytes=0-1,5-6", "items=0-5", "bytes=a-b", "bytes=-"):  # ignored: the whole representation
        response = await client.get(url, headers={"range": header})
        assert response.status_code == 200 and response.content == whole.content, header
    others = {(await full(client, f"/v1/jobs/{job}/result{q}")).headers["etag"] for q in URLS}
    assert etag in others and len(others) == len(URLS)  # one tag per representation
    assert (await full(client, url)).headers["etag"] == etag  # and stable
    stale = await client.get(url, headers={"range": "bytes=10-", "if-range": '"not-the-tag"'})
    assert stale.status_code == 200 and stale.content == whole.content
    weak = await client.get(url, headers={"range": "bytes=10-", "if-range": f"W/{etag}"})
    assert weak.status_code == 200
    fresh = await client.get(url, headers={"range": "bytes=10-", "if-range": etag})
    assert fresh.status_code == 206 and fresh.content == whole.content[10:]
    dated = await client.get(url, headers={"range": "bytes=10-", "if-range": whole.headers["last-modified"]})
    assert dated.status_code == 206
    head = await client.head(url, headers={"range": "bytes=-300"})
    assert head.status_code == 206 and head.content == b"" and head.headers["content-length"] == "300"
    assert head.headers["etag"] == etag


async def test_interrupted_download_resumes_and_parts_join(client: httpx.AsyncClient, job: str) -> None:
    url = f"/v1/jobs/{job}/result?output=nngp"
    whole = (await full(client, url)).content
    received = b""
    async with client.stream("GET", url) as response:  # the connection drops after a part
        etag = response.headers["etag"]
        async for chunk in response.aiter_raw(1000):
            received += chunk
            if len(received) >= 40_000:
                break
    assert 40_000 <= len(received) < len(whole)
    rest = await client.get(url, headers={"range": f"bytes={len(received)}-", "if-range": etag})
    assert rest.status_code == 206
    assert received + rest.content == whole

    bounds = [0, 13, len(whole) // 3, len(whole) // 2, len(whole)]
    parts = await asyncio.gather(*(client.get(url, headers={"range": f"bytes={a}-{b - 1}"})
                                   for a, b in itertools.pairwise(bounds)))
    assert all(p.status_code == 206 for p in parts)
    assert b"".join(p.content for p in parts) == whole


async def test_results_from_before_the_npy_layout_are_still_served(client: httpx.AsyncClient, job: str,
                                                                  data_dir: Path) -> None:
    """A job folder of the old layout (``result.zarr``, row-slab chunks) reads the same, ranges too."""
    import zarr

    url = f"/v1/jobs/{job}/result?rows=10:47&output=nngp"
    before = (await full(client, url)).content
    folder = data_dir / "jobs" / job
    group = zarr.open_group(folder / "result.zarr", mode="w")
    saved = {}
    for name in ("ntk", "nngp"):
        saved[name] = np.load(folder / "result" / f"{name}.npy")
        array = group.create_array(name, shape=saved[name].shape, chunks=(32, 32), dtype=saved[name].dtype,
                                   compressors=None, fill_value=0.0)
        array[:] = saved[name]
    shutil.move(folder / "result", folder / "result.moved")
    try:
        assert (await full(client, url)).content == before
        part = await client.get(url, headers={"range": "bytes=1000-2999"})
        assert part.status_code == 206 and part.content == before[1000:3000]
    finally:
        shutil.rmtree(folder / "result.zarr")
        shutil.move(folder / "result.moved", folder / "result")


async def test_rows_and_outputs_are_validated_before_any_range(client: httpx.AsyncClient, job: str) -> None:
    for query, loc in (("?rows=47:10", "rows"), ("?rows=0:151", "rows"), ("?output=kernel", "output")):
        problem = assert_problem(await client.get(f"/v1/jobs/{job}/result{query}", headers={"range": "bytes=0-9"}),
                                 422)
        assert problem["errors"][0]["loc"] == ["query", loc]


def test_parse_range() -> None:
    assert parse_range("bytes=0-0", 10) == (0, 0)
    assert parse_range("bytes=x-", 10) is None  # not the syntax: ignored
    assert parse_range("bytes=3-", 10) == (3, 9)
    assert parse_range("BYTES=-4", 10) == (6, 9)
    assert parse_range("bytes=2-100", 10) == (2, 9)
    assert parse_range("bytes=0-1, 4-5", 10) is None
    for unsatisfiable in ("bytes=10-", "bytes=-0", "bytes=4-3"):
        with pytest.raises(ProblemError) as raised:
            parse_range(unsatisfiable, 10)
        assert raised.value.status == 416 and raised.value.headers == {"Content-Range": "bytes */10"}
