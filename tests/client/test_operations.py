"""The client cannot drift from the API: every operation it declares (``ntk_client.operations``) is in
the committed OpenAPI document (``openapi/openapi.json``, itself checked against the app) with that
method, path, success status, request fields, parameters, media types and response fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ntk_client.operations import OPERATIONS, Operation

DOCUMENT = json.loads((Path(__file__).resolve().parents[2] / "openapi" / "openapi.json").read_text())


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = DOCUMENT["components"]["schemas"][name]
    return schema


def _objects(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The object schemas a (possibly nullable / union) schema allows."""
    schema = _resolve(schema)
    if "properties" in schema:
        return [schema]
    return [obj for key in ("anyOf", "oneOf", "allOf") for sub in schema.get(key, []) for obj in _objects(sub)]


def _properties(schema: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for obj in _objects(schema):
        found |= obj["properties"]
    return found


def _request_schema(op: Operation, spec: dict[str, Any]) -> dict[str, Any]:
    schema = spec["requestBody"]["content"][op.content]["schema"]
    if op.variant is None:
        return _resolve(schema)
    variants = [obj for obj in _objects(schema) if obj["properties"]["type"].get("const") == op.variant
                or obj["properties"]["type"].get("enum") == [op.variant]]
    assert len(variants) == 1, f"no single request schema with type {op.variant!r}"
    return variants[0]


def _has_field(schema: dict[str, Any], dotted: str) -> bool:
    head, _, rest = dotted.partition(".")
    properties = _properties(schema)
    if head not in properties:
        return False
    return not rest or _has_field(properties[head], rest)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_operation_matches_the_openapi_document(name: str) -> None:
    op = OPERATIONS[name]
    assert op.path in DOCUMENT["paths"], f"{name}: no path {op.path}"
    spec = DOCUMENT["paths"][op.path].get(op.method.lower())
    assert spec is not None, f"{name}: {op.path} has no {op.method}"
    if op.variant is None:
        assert spec["operationId"] == name
    assert str(op.status) in spec["responses"], f"{name}: {op.status} is not a documented answer"

    parameters = {(p["in"], p["name"]) for p in spec.get("parameters", [])}
    for query in op.query:
        assert ("query", query) in parameters, f"{name}: no query parameter {query}"
    for header in op.headers:
        assert ("header", header) in parameters, f"{name}: no header {header}"
    for key in op.path.split("{")[1:]:
        assert ("path", key.split("}")[0]) in parameters

    if op.content is None:
        assert "requestBody" not in spec or not spec["requestBody"].get("required")
    else:
        assert op.content in spec["requestBody"]["content"], f"{name}: request is not {op.content}"
    if op.body:
        request = _request_schema(op, spec)
        properties = request["properties"]
        missing = sorted(op.body - set(properties))
        assert not missing, f"{name}: the client sends {missing}, which {op.path} does not take"
        required = set(request.get("required", []))
        assert required <= op.body, f"{name}: the client never sends required {sorted(required - op.body)}"

    answer = spec["responses"][str(op.status)]
    for media in op.accept:
        assert media in answer.get("content", {}), f"{name}: the {op.status} answer has no {media}"
    if op.reads:
        schema = answer["content"]["application/json"]["schema"]
        missing = sorted(field for field in op.reads if not _has_field(schema, field))
        assert not missing, f"{name}: the client reads {missing}, not in the {op.status} answer"


def test_every_operation_the_client_needs_is_declared_and_unique() -> None:
    pairs = [(op.method, op.path, op.variant) for op in OPERATIONS.values()]
    assert len(pairs) == len(set(pairs))
    creating = {(op.method, op.path) for op in OPERATIONS.values() if op.creates}
    assert creating == {("POST", "/v1/datasets"), ("POST", "/v1/models"), ("POST", "/v1/jobs")}
    for op in OPERATIONS.values():
        if op.creates:  # the contract's creating requests all take an Idempotency-Key
            assert "Idempotency-Key" in op.headers
    documented = {(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
                  if path.startswith("/v1/")}
    assert documented == {(op.method, op.path) for op in OPERATIONS.values()}, "a /v1 operation without a client call"
