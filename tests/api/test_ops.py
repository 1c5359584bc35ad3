"""Operations endpoints, request ids, metrics."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["store"] == "ok"


async def test_request_id_is_generated_or_echoed(client: httpx.AsyncClient) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    echoed = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    problem = await client.get("/nowhere", headers={"X-Request-ID": "req-9"})
    assert problem.headers["x-request-id"] == "req-9"
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert unsafe.headers["x-request-id"] != "x" * 500


async def test_metrics_count_requests_by_route_and_status(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    await client.get("/v1/datasets/ds_missing")
    text = (await client.get("/metrics")).text
    assert 'ntk_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'route="/v1/datasets/{dataset_id}",status="404"' in text
    assert "ntk_http_request_duration_seconds_bucket" in text


async def test_unexpected_exception_is_an_opaque_500_problem(app, client: httpx.AsyncClient, caplog) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    response = await client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "secret" not in response.text and "Traceback" not in response.text
    assert "boom-1" in response.json()["detail"]
    assert any("unhandled error" in r.getMessage() for r in caplog.records)


async def test_readyz_reports_an_unusable_store(settings, tmp_path) -> None:
    from service.app import create_app

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    app = create_app(settings.model_copy(update={"data_dir": blocker}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
