"""Hostile and malformed input: always a 4xx problem document, never a 5xx."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

LINEAR = {"type": "linear"}


def assert_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= {"type", "title", "status", "detail", "errors"}
    assert body["status"] == status and body["detail"]
    return body


async def post_raw(client: httpx.AsyncClient, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return await client.post("/v1/kernels", content=body, headers={"content-type": content_type})


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"1" + b"0" * 400])
async def test_non_finite_json_tokens(client: httpx.AsyncClient, token: bytes) -> None:
    body = assert_problem(await post_raw(client, b'{"kernel": {"type": "linear"}, "x1": [[1, ' + token + b"]]}"), 422)
    assert "finite" in body["detail"]


@pytest.mark.parametrize(
    ("x1", "where", "fragment"),
    [
        ([[1.0, 2.0], [3.0]], "x1", "row 1 has 1 entries but row 0 has 2"),
        ([], "x1", "at least 1"),
        ([[]], "x1", "at least 1"),
        ([[[1.0]]], "x1", "n × d inputs only"),
        ([[[[[1.0]]]]], "x1", "valid number"),
        ([["1.0", 2.0]], "x1", "valid number"),
        ([[True, 2.0]], "x1", "valid number"),
        ([[None]], "x1", "valid number"),
        ("abc", "x1", "must be a dataset id"),
        (7, "x1", "valid list"),
    ],
)
async def test_bad_matrices(client: httpx.AsyncClient, x1: object, where: str, fragment: str) -> None:
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": LINEAR, "x1": x1}), 422)
    assert body["errors"][0]["loc"][:2] == ["body", where]
    assert fragment in body["detail"]


async def test_feature_mismatch_names_both_fields(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/v1/kernels", json={"kernel": LINEAR, "x1": [[1, 2]], "x2": [[1, 2, 3]]}), 422
    )
    assert body["detail"] == "x2 has 3 features but x1 has 2"
    assert body["errors"] == [{"loc": ["body", "x2"], "msg": "x2 has 3 features but x1 has 2"}]


@pytest.mark.parametrize(
    "kernel",
    [
        {"type": "mystery"},
        {"type": "network", "layers": [{"type": "conv"}]},
        {"type": "network", "layers": []},
        {"type": "network", "layers": [{"type": "dense", "w_std": 0}]},
        {"type": "network", "layers": [{"type": "dense", "b_std": -1}]},
        {"type": "network", "layers": [{"type": "elementwise", "fn": "__import__('os')"}]},
        {"type": "network", "layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}],
         "parameterization": "standard"},
        {"type": "polynomial", "degree": 0},
        {"type": "polynomial", "degree": 2.5},
        {"type": "rbf", "lengthscale": -1},
        {"type": "rbf"},
        {"type": "linear", "lengthscale": 1},
        "linear",
    ],
)
async def test_bad_kernel_specs(client: httpx.AsyncClient, kernel: object) -> None:
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": kernel, "x1": [[1.0]]}), 422)
    assert body["errors"][0]["loc"][:2] == ["body", "kernel"]


async def test_standard_parameterization_message_names_the_layer(client: httpx.AsyncClient) -> None:
    kernel = {"type": "network", "parameterization": "standard",
              "layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}]}
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": kernel, "x1": [[1.0]]}), 422)
    assert "layers[2]: standard parameterization needs this layer's fan-in" in body["detail"]
    assert "set `width`" in body["detail"]


async def test_unknown_output_name(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/v1/kernels", json={"kernel": LINEAR, "x1": [[1.0]], "outputs": ["ntk"]}), 422
    )
    assert "it yields ['kernel']" in body["detail"]


@pytest.mark.parametrize("body", [b"", b"{", b"[1, 2]", b'"text"', b"\xff\xfe", b'{"kernel": 1e5}'])
async def test_malformed_bodies(client: httpx.AsyncClient, body: bytes) -> None:
    assert_problem(await post_raw(client, body), 422)


async def test_unknown_top_level_field_is_refused(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.post("/v1/kernels", json={"kernel": LINEAR, "x1": [[1]], "x3": 1}), 422)
    assert body["errors"][0]["loc"] == ["body", "x3"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/x-npy"])
async def test_wrong_content_type_is_415(client: httpx.AsyncClient, content_type: str) -> None:
    assert_problem(await post_raw(client, b'{"kernel": {"type": "linear"}, "x1": [[1]]}', content_type), 415)


async def test_unsatisfiable_accept_is_406(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/kernels", json={"kernel": LINEAR, "x1": [[1]]}, headers={"accept": "text/html"})
    assert_problem(response, 406)


async def test_npy_for_several_outputs_is_406(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/kernels", json={"kernel": {"type": "two_layer_relu"}, "x1": [[1.0]]},
        headers={"accept": "application/x-npy"},
    )
    assert "exactly one matrix" in assert_problem(response, 406)["detail"]


async def test_unknown_route_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nothing-here"), 404)
    response = await client.get("/v1/kernels")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


async def test_oversize_body_is_413(settings) -> None:
    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_body_bytes": 2048}))
    big = b'{"kernel": {"type": "linear"}, "x1": [[' + b"1.0," * 2000 + b"1.0]]}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        declared = await c.post("/v1/kernels", content=big, headers={"content-type": "application/json"})

        async def chunks():
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        streamed = await c.post("/v1/kernels", content=chunks(), headers={"content-type": "application/json"})
    for response in (declared, streamed):
        body = assert_problem(response, 413)
        assert "NTK_MAX_BODY_BYTES" in body["detail"] and "/v1/jobs" in body["detail"]


async def test_result_size_limit_is_413(settings) -> None:
    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_result_entries": 10}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/kernels", json={"kernel": LINEAR, "x1": [[1.0]] * 4})
    body = assert_problem(response, 413)
    assert "NTK_MAX_RESULT_ENTRIES" in body["detail"] and "/v1/jobs" in body["detail"]


async def test_layer_limit_is_413(settings) -> None:
    from service.app import create_app

    app = create_app(settings.model_copy(update={"max_layers": 3}))
    kernel = {"type": "network", "layers": [{"type": "dense"}, {"type": "relu"}] * 2 + [{"type": "dense"}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.post("/v1/kernels", json={"kernel": kernel, "x1": [[1.0]]})
    assert "NTK_MAX_LAYERS" in assert_problem(response, 413)["detail"]


@pytest.mark.parametrize(("layers", "loc"), [
    ([{"type": "dense", "w_std": 1e308}, {"type": "relu"}, {"type": "dense", "w_std": 1e308}], ["layers", 0]),
    ([{"type": "dense"}, {"type": "branches", "branches": [[{"type": "relu"}, {"type": "dense", "w_std": 1e160},
                                                          {"type": "relu"}, {"type": "dense", "w_std": 1e160}], []]},
      {"type": "dense"}], ["layers", 1, "branches", 0, 1]),
])
async def test_overflow_in_the_recursion_is_422_naming_the_layer(client: httpx.AsyncClient, layers: list,
                                                                 loc: list) -> None:
    kernel = {"type": "network", "layers": layers}
    for path, extra in (("/v1/kernels", {"x1": [[1.0, 2.0], [0.5, -1.0]]}),
                        ("/v1/models", {"x_train": [[1.0, 2.0], [0.5, -1.0]], "y_train": [1.0, 2.0]})):
        body = assert_problem(await client.post(path, json={"kernel": kernel} | extra), 422)
        assert body["errors"][0]["loc"] == ["body", "kernel", *loc]
        assert "overflows float64" in body["detail"]
