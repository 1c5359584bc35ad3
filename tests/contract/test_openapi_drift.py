"""The committed openapi/openapi.json is exactly what the app serves."""

from __future__ import annotations

import json

from service.__main__ import OPENAPI_PATH, openapi_text


def test_committed_spec_matches_the_app() -> None:
    committed = OPENAPI_PATH.read_text(encoding="utf-8")
    assert json.loads(committed) == json.loads(openapi_text()), (
        "openapi/openapi.json is stale: run `python -m service openapi` and commit the result"
    )
    assert committed == openapi_text()


def test_spec_declares_problems_and_stable_operation_ids() -> None:
    spec = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))
    assert "Problem" in spec["components"]["schemas"]
    operation_ids = []
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            operation_ids.append(operation["operationId"])
            assert "_" not in operation["operationId"], f"{method} {path} has a generated operationId"
            if path.startswith("/v1"):
                assert "application/problem+json" in operation["responses"]["422"]["content"]
    assert len(operation_ids) == len(set(operation_ids))


def test_kernel_specs_are_tagged_unions() -> None:
    schemas = json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))["components"]["schemas"]
    kernel = schemas["KernelsRequest"]["properties"]["kernel"]
    assert kernel["discriminator"]["propertyName"] == "type"
    assert set(kernel["discriminator"]["mapping"]) == {"network", "two_layer_relu", "linear", "polynomial", "rbf",
                                                       "laplace"}
    layers = schemas["NetworkKernel"]["properties"]["layers"]["items"]
    assert layers["discriminator"]["propertyName"] == "type"
    assert "elementwise" in layers["discriminator"]["mapping"]
