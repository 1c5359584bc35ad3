"""Retries and resumable downloads, with faults injected by an ``httpx`` transport in front of the real server:
``503`` + ``Retry-After`` then success (same ``Idempotency-Key``), a connection dropped after the
server created a model (the retry returns that model, nothing twice), bounded retries, and a
result download cut midway and completed by a range request (or restarted when the result changed)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest

from ntk_client import Client, ProblemError, kernels
from ntk_client.transport import retry_after_seconds

RNG = np.random.default_rng(7)
X = RNG.normal(size=(8, 3))
Y = RNG.normal(size=8)
RBF = kernels.rbf(lengthscale=1.0)
OVERLOADED = {"type": "https://ntk-service.dev/problems/overloaded", "title": "Service overloaded", "status": 503,
              "detail": "All compute slots are busy; retry after Retry-After seconds.", "errors": []}


class Faulty(httpx.HTTPTransport):
    """The real transport, with ``fault(request, attempt)`` deciding per matching request what goes wrong."""

    def __init__(self, method: str, path_end: str, fault: Callable[[httpx.Request, int, httpx.HTTPTransport],
                                                                 httpx.Response | None]) -> None:
        super().__init__()
        self.method, self.path_end, self.fault = method, path_end, fault
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == self.method and request.url.path.endswith(self.path_end):
            self.seen.append(request)
            answer = self.fault(request, len(self.seen), super())
            if answer is not None:
                return answer
        return super().handle_request(request)


def overloaded(times: int, retry_after: str = "0"):
    def fault(request: httpx.Request, attempt: int, real: httpx.HTTPTransport) -> httpx.Response | None:
        if attempt > times:
            return None
        return httpx.Response(503, headers={"Retry-After": retry_after, "Content-Type": "application/problem+json"},
                              json=OVERLOADED, request=request)
    return fault


def test_503_is_retried_after_retry_after_with_the_same_idempotency_key(server_url: str) -> None:
    transport = Faulty("POST", "/v1/models", overloaded(2))
    with Client(server_url, transport=transport, max_retries=3) as client:
        before = {m.id for m in client.models()}
        model = client.fit(RBF, X, Y, ridge=0.1)
        created = {m.id for m in client.models()} - before
    assert created == {model.id}  # created once
    keys = [r.headers["idempotency-key"] for r in transport.seen]
    assert len(keys) == 3 and len(set(keys)) == 1 and keys[0]
    with Client(server_url, transport=Faulty("POST", "/v1/models", overloaded(1))) as client:
        other = client.fit(RBF, X, Y, ridge=0.2)
    assert other.id != model.id  # a new call is a new key


def test_retries_are_bounded_and_waits_capped(server_url: str) -> None:
    transport = Faulty("POST", "/v1/spectra", overloaded(100, retry_after="3600"))
    waits: list[float] = []
    with Client(server_url, transport=transport, max_retries=2, max_backoff=0.01) as client:
        client._session.sleep = waits.append
        with pytest.raises(ProblemError) as refused:
            client.spectrum(RBF, X)
    assert refused.value.status == 503 and refused.value.title == "Service overloaded"
    assert len(transport.seen) == 3 and waits == [0.01, 0.01]


def test_a_create_whose_answer_was_lost_is_retried_without_creating_twice(server_url: str) -> None:
    def lose_first_answer(request: httpx.Request, attempt: int, real: httpx.HTTPTransport) -> httpx.Response | None:
        if attempt == 1:
            real.handle_request(request).read()  # the server creates the dataset …
            raise httpx.ReadError("connection reset by peer", request=request)  # … and the answer is lost
        return None

    transport = Faulty("POST", "/v1/datasets", lose_first_answer)
    with Client(server_url, transport=transport, max_retries=2) as client:
        client._session.sleep = lambda seconds: None
        before = {d.id for d in client.datasets()}
        dataset = client.upload(X, name="once")
        created = {d.id for d in client.datasets()} - before
    assert created == {dataset.id}
    keys = {r.headers["idempotency-key"] for r in transport.seen}
    assert len(transport.seen) == 2 and len(keys) == 1


class Cut(httpx.SyncByteStream):
    """The first ``keep`` bytes of a body, then a dropped connection."""

    def __init__(self, inner: httpx.SyncByteStream, keep: int) -> None:
        self.inner, self.keep = inner, keep

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        for chunk in self.inner:
            if sent + len(chunk) >= self.keep:
                yield chunk[: self.keep - sent]
                raise httpx.ReadError("connection dropped midway")
            sent += len(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def cut_first(keep: int, spoil_if_range: bool = False):
    def fault(request: httpx.Request, attempt: int, real: httpx.HTTPTransport) -> httpx.Response | None:
        if spoil_if_range and "if-range" in request.headers:  # as if the result had changed meanwhile
            request.headers["If-Range"] = '"another-version"'
        if attempt > 1:
            return None
        response = real.handle_request(request)
        return httpx.Response(response.status_code, headers=response.headers, stream=Cut(response.stream, keep),
                              request=request)
    return fault


@pytest.fixture(scope="module")
def finished_gram(server_url: str) -> Iterator[tuple[str, bytes]]:
    """A succeeded gram job and the exact bytes of its result."""
    with Client(server_url) as client:
        job = client.gram_job(RBF, RNG.normal(size=(120, 3)), get="kernel").wait(timeout=60)
        whole = httpx.get(f"{server_url}/v1/jobs/{job.id}/result").content
        yield job.id, whole
        job.delete()


@pytest.mark.parametrize("changed", [False, True], ids=["resumed", "restarted-after-a-change"])
def test_an_interrupted_download_is_completed(server_url: str, finished_gram: tuple[str, bytes], tmp_path,
                                              changed: bool) -> None:
    job_id, whole = finished_gram
    transport = Faulty("GET", "/result", cut_first(len(whole) // 2, spoil_if_range=changed))
    with Client(server_url, transport=transport, max_retries=2) as client:
        client._session.sleep = lambda seconds: None
        job = client.job(job_id)
        size = job.download(tmp_path / "k.npy")
    assert (tmp_path / "k.npy").read_bytes() == whole and size == len(whole)
    first, second = transport.seen
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={len(whole) // 2}-"
    assert second.headers["if-range"] == ('"another-version"' if changed else first_etag(server_url, job_id))

    transport = Faulty("GET", "/result", cut_first(1000))
    with Client(server_url, transport=transport) as client:
        client._session.sleep = lambda seconds: None
        np.testing.assert_array_equal(client.job(job_id).result(), np.load(tmp_path / "k.npy"))
    assert [r.headers.get("range") for r in transport.seen] == [None, "bytes=1000-"]


def first_etag(server_url: str, job_id: str) -> str:
    return httpx.head(f"{server_url}/v1/jobs/{job_id}/result").headers["etag"]


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 120, usegmt=True)
    assert 100 < retry_after_seconds(later) <= 120
    assert retry_after_seconds(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


def test_api_key_unreachable_server_and_errors_that_are_not_problem_documents() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("connection refused", request=request)  # never reached the server: retried
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(502, text="<html>bad gateway</html>", headers={"Content-Type": "text/html"})

    with Client("http://ntk.invalid", api_key="k1", transport=httpx.MockTransport(handler), max_retries=1) as client:
        client._session.sleep = lambda seconds: None
        client.delete_dataset("ds_x")
        with pytest.raises(ProblemError) as gateway:
            client.dataset("ds_x")
    assert [r.method for r in seen] == ["DELETE", "DELETE", "GET"]
    assert all(r.headers["authorization"] == "Bearer k1" for r in seen)
    assert gateway.value.status == 502 and "bad gateway" in gateway.value.detail
