"""Admission control of synchronous compute, large bodies off the loop, streamed answers (in-process)."""

from __future__ import annotations

import asyncio
import io

import anyio
import httpx
import numpy as np
import orjson
import pytest
from fastapi import FastAPI

from service.app import create_app
from service.compute import ADMITTED_OPERATIONS, AdmissionController, ClientGone
from service.npy import encode_npy
from service.observability import Metrics
from service.problems import ProblemError
from service.responses import CHUNK_BYTES, ORJSONResponse, dumps, iter_json, npy_response
from service.settings import Settings
from tests.api.test_errors import assert_problem

pytestmark = pytest.mark.anyio

SMALL = {"kernel": {"type": "linear"}, "x1": [[1.0, 2.0], [3.0, 4.0]]}


def controller(slots: int = 1, queue: int = 2, queue_bytes: int = 1000, timeout: float = 5.0) -> AdmissionController:
    return AdmissionController(slots, queue, queue_bytes, timeout, Metrics())


def metric(c: AdmissionController, name: str, labels: dict | None = None) -> float:
    return c.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def running(c: AdmissionController, nbytes: int = 0) -> object:
    ticket = c.admit(nbytes)
    c.arrived(ticket, nbytes)
    assert ticket.running
    return ticket


async def test_slots_then_queue_then_503_with_retry_after() -> None:
    c = controller(slots=2, queue=2)
    tickets = [c.admit(10) for _ in range(4)]
    assert c.running == 0 and len(c.queue) == 4  # admitted; bodies still arriving hold no thread
    with pytest.raises(ProblemError) as refused:
        c.admit(10)
    assert refused.value.status == 503 and refused.value.slug == "overloaded"
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert metric(c, "ntk_compute_rejected_total", {"reason": "queue_full"}) == 1
    for ticket in tickets:
        c.arrived(ticket, 10)
    assert [t.running for t in tickets] == [True, True, False, False] and c.queued_bytes == 20
    assert metric(c, "ntk_compute_queued") == 2 and metric(c, "ntk_compute_running") == 2
    c.release(tickets[0])
    assert tickets[2].running and c.running == 2 and list(c.queue) == [tickets[3]] and c.queued_bytes == 10


async def test_queue_is_first_in_first_out_among_arrived_bodies() -> None:
    c = controller(slots=1, queue=6, queue_bytes=10**6)
    first = running(c)
    waiting = [c.admit(0) for _ in range(5)]
    for i in (3, 1, 0, 2):  # bodies arrive in another order; number 4 is still uploading
        c.arrived(waiting[i], 0)
    started: list[int] = []

    async def wait_and_run(i: int) -> None:
        await c.wait(waiting[i])
        started.append(i)
        await anyio.sleep(0.01)
        c.release(waiting[i])

    async with anyio.create_task_group() as tg:
        for i in (2, 0, 3, 1):
            tg.start_soon(wait_and_run, i)
        await anyio.sleep(0.01)
        c.release(first)
    assert started == [0, 1, 2, 3] and c.running == 0 and list(c.queue) == [waiting[4]]
    c.arrived(waiting[4], 0)
    assert waiting[4].running


async def test_queue_is_bounded_by_body_bytes() -> None:
    c = controller(slots=1, queue=10, queue_bytes=100)
    running(c, 1000)  # an idle server admits a body over the bound; a running one does not count
    c.admit(60)
    with pytest.raises(ProblemError) as refused:
        c.admit(50)
    assert refused.value.status == 503 and "NTK_COMPUTE_QUEUE_BYTES" in refused.value.detail
    small = c.admit(40)
    with pytest.raises(ProblemError):  # the body turned out larger than declared
        c.arrived(small, 41)
    assert len(c.queue) == 1 and c.queued_bytes == 60
    assert metric(c, "ntk_compute_rejected_total", {"reason": "queue_bytes"}) == 2


async def test_client_disconnecting_while_queued_is_dropped_and_frees_its_place() -> None:
    c = controller(slots=1, queue=1)
    first = running(c)
    queued = c.admit(0)
    c.arrived(queued, 0)

    async def receive() -> dict:
        await anyio.sleep(0.05)
        return {"type": "http.disconnect"}

    with pytest.raises(ClientGone):
        await c.wait(queued, receive)
    assert not c.queue and not queued.running
    c.abandon(queued)  # what the route does on ClientGone: counted once, nothing else changes
    assert not c.queue and metric(c, "ntk_compute_abandoned_total") == 1
    c.release(first)
    assert c.running == 0


async def test_waiting_too_long_is_a_503() -> None:
    c = controller(slots=1, queue=1, timeout=0.05)
    running(c)
    queued = c.admit(0)
    c.arrived(queued, 0)
    with pytest.raises(ProblemError) as refused:
        await c.wait(queued)
    assert refused.value.status == 503 and "NTK_COMPUTE_QUEUE_TIMEOUT" in refused.value.detail
    assert not c.queue


@pytest.fixture
def small_app(tmp_path) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path / "data", compute_threads=1, compute_queue=1))


async def test_api_queues_then_answers_503_with_retry_after(small_app: FastAPI) -> None:
    admission = small_app.state.admission
    held = running(admission)  # every compute thread busy
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_app), base_url="http://t") as client:
        queued = asyncio.create_task(client.post("/v1/kernels", json=SMALL))
        while not admission.queue:
            await asyncio.sleep(0.005)
        refused = await client.post("/v1/kernels", json=SMALL)
        body = assert_problem(refused, 503)
        assert body["type"].endswith("/overloaded") and int(refused.headers["retry-after"]) >= 1
        assert (await client.get("/healthz")).status_code == 200  # operations are never queued
        assert not queued.done()
        admission.release(held)
        assert (await queued).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'ntk_http_requests_total{method="POST",route="/v1/kernels",status="503"} 1.0' in metrics
    assert "ntk_compute_queued 0.0" in metrics
    assert admission.running == 0 and not admission.queue


def create_model_scope(body: bytes) -> dict:
    """The ASGI scope of ``POST /v1/models`` with a JSON ``body`` (for tests that drive the app's
    receive/send by hand, e.g. a client that disconnects)."""
    return {"type": "http", "http_version": "1.1", "method": "POST", "path": "/v1/models", "raw_path": b"/v1/models",
            "query_string": b"", "root_path": "", "scheme": "http", "server": ("t", 80), "client": ("c", 1),
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}


async def test_a_client_that_leaves_while_queued_creates_no_model(small_app: FastAPI) -> None:
    admission = small_app.state.admission
    held = running(admission)
    body = orjson.dumps({"kernel": {"type": "rbf", "lengthscale": 1.0}, "x_train": [[0.0], [1.0]], "y_train": [0.0, 1.0]})
    messages: list[dict] = []
    left = anyio.Event()

    async def receive() -> dict:
        if not messages:
            messages.append({"type": "http.request", "body": body, "more_body": False})
            return messages[-1]
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = create_model_scope(body)
    request = asyncio.create_task(small_app(scope, receive, send))
    while not admission.queue:
        await asyncio.sleep(0.005)
    left.set()
    await request
    assert len(messages) == 1  # nothing was sent: no response for nobody
    admission.release(held)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_app), base_url="http://t") as client:
        assert (await client.get("/v1/models")).json()["items"] == []
        metrics = (await client.get("/metrics")).text
    assert "ntk_compute_abandoned_total 1.0" in metrics and 'status="499"' in metrics


async def test_a_client_gone_before_a_computation_step_gets_nothing_run(small_app: FastAPI) -> None:
    body = orjson.dumps({"kernel": {"type": "rbf", "lengthscale": 1.0}, "x_train": [[0.0], [1.0]],
                         "y_train": [0.0, 1.0]})
    messages: list[dict] = []

    async def receive() -> dict:  # the body, then the client is gone
        if not messages:
            messages.append({"type": "http.request", "body": body, "more_body": False})
            return messages[-1]
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        messages.append(message)

    scope = create_model_scope(body)
    await small_app(scope, receive, send)
    assert len(messages) == 1 and small_app.state.admission.running == 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=small_app), base_url="http://t") as client:
        assert (await client.get("/v1/models")).json()["items"] == []


def test_every_admitted_operation_exists_and_documents_its_503(app: FastAPI) -> None:
    operations = {op["operationId"]: op for path in app.openapi()["paths"].values() for op in path.values()}
    assert set(operations) >= ADMITTED_OPERATIONS
    for name in ADMITTED_OPERATIONS:
        assert "Retry-After" in operations[name]["responses"]["503"]["headers"]


async def test_large_bodies_are_validated_off_the_loop_with_the_same_answers(client: httpx.AsyncClient) -> None:
    x = np.random.default_rng(3).normal(size=(400, 800))  # a ~6 MB body: parsed in a helper process
    body = orjson.dumps({"kernel": {"type": "linear"}, "x1": x, "x2": x[:3], "outputs": ["kernel"]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    assert len(body) > 4 << 20
    response = await client.post("/v1/kernels", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["results"]["kernel"]), x @ x[:3].T, rtol=1e-12)

    bad = body.replace(b"[", b"[true,", 2)[:-1] + b"}"  # a boolean where a number belongs
    problem = assert_problem(await client.post("/v1/kernels", content=bad, headers={"content-type": "application/json"}),
                             422)
    assert problem["errors"][0]["loc"][:2] == ["body", "x1"]
    broken = body[:-10]
    problem = assert_problem(await client.post("/v1/kernels", content=broken,
                                               headers={"content-type": "application/json"}), 422)
    assert "not valid JSON" in problem["detail"]


async def test_large_answers_are_streamed_with_the_same_bytes(client: httpx.AsyncClient) -> None:
    x = np.random.default_rng(4).normal(size=(600, 5))
    request = {"kernel": {"type": "rbf", "lengthscale": 2.0}, "x1": x.tolist()}
    response = await client.post("/v1/kernels", json=request)
    assert response.status_code == 200 and "content-length" not in response.headers  # chunked
    assert response.content == dumps({"shape": [600, 600], "dtype": "float64",
                                      "results": {"kernel": np.array(response.json()["results"]["kernel"])}})
    npy = await client.post("/v1/kernels", json=request, headers={"accept": "application/x-npy"})
    matrix = np.load(io.BytesIO(npy.content))
    assert npy.content == encode_npy(matrix) and int(npy.headers["content-length"]) == len(npy.content)
    np.testing.assert_array_equal(matrix, np.array(response.json()["results"]["kernel"]))


async def test_streamed_json_and_npy_encoders_match_the_whole_renderings() -> None:
    rng = np.random.default_rng(5)
    messages: list[dict] = []

    async def send(message: dict) -> None:
        messages.append(message)

    contents = [{"a": rng.normal(size=(700, 300)), "b": [1, {"c": rng.normal(size=200_000).astype(np.float32)}]},
                rng.normal(size=(3, 90_000, 2))[:, ::2], {"small": np.arange(3.0)}]
    for content in contents:
        assert b"".join(iter_json(content)) == dumps(content)
        messages.clear()
        await ORJSONResponse(content)({"type": "http"}, None, send)
        assert b"".join(m.get("body", b"") for m in messages[1:]) == dumps(content)
        assert all(len(m.get("body", b"")) <= 2 * CHUNK_BYTES for m in messages[1:])
    for array in (rng.normal(size=(300, 400)), rng.normal(size=(400, 300)).T.astype(">f4")):
        messages.clear()
        await npy_response(array)({"type": "http"}, None, send)
        assert b"".join(m.get("body", b"") for m in messages[1:]) == encode_npy(array)


async def test_a_large_creation_body_keeps_its_idempotency_fingerprint(client: httpx.AsyncClient) -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 400)), rng.normal(size=300)  # ~2.5 MB: parsed in a worker thread
    body = orjson.dumps({"kernel": {"type": "rbf", "lengthscale": 20.0}, "x_train": x, "y_train": y, "ridge": 0.1},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"content-type": "application/json", "idempotency-key": "big-fit"}
    first = await client.post("/v1/models", content=body, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/models", content=body, headers=headers)
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = await client.post("/v1/models", content=body.replace(b'"ridge":0.1', b'"ridge":0.2'), headers=headers)
    assert_problem(other, 422)
