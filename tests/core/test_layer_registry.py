"""Every registered layer kind has all of its forms, and the forms agree on the names.

The registry (``core.kernels.registry.LAYER_KINDS``) is the one list of layer kinds: the
infinite-width rules (``rules.RULES``), the finite-width layers (``core.empirical.layers.FINITE``),
the request schema (generated pydantic models, hence the OpenAPI document) and the JSON round trip
must each cover exactly the registered names. A kind added without one of them fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.empirical.layers import FINITE
from core.kernels import spec as S
from core.kernels.registry import LAYER_KINDS, check_param, layer_from_json, layer_to_json, validate_layer
from core.kernels.rules import RULES

OPENAPI = json.loads((Path(__file__).parents[2] / "openapi" / "openapi.json").read_text())


def test_every_kind_has_an_infinite_and_a_finite_rule() -> None:
    assert set(RULES) == set(LAYER_KINDS)
    assert set(FINITE) == set(LAYER_KINDS)


def test_every_kind_is_in_the_request_schema() -> None:
    from service.schemas.kernels import LAYER_MODELS

    assert set(LAYER_MODELS) == set(LAYER_KINDS)
    schemas = OPENAPI["components"]["schemas"]
    for name, model in LAYER_MODELS.items():
        schema = schemas[model.__name__]
        assert schema["properties"]["type"]["const"] == name
        assert set(schema["properties"]) == {"type"} | {p.name for p in LAYER_KINDS[name].params}


def _example(kind_name: str) -> dict:
    kind = LAYER_KINDS[kind_name]
    out: dict = {"type": kind_name}
    for param in kind.params:
        if param.required:
            out[param.name] = {"ints": [2, 2], "choice": param.choices[:1] and param.choices[0],
                               "layers_list": [[{"type": "dense"}], []]}[param.kind]
    return out


@pytest.mark.parametrize("name", sorted(LAYER_KINDS))
def test_json_round_trip_and_spec_class(name: str) -> None:
    layer = layer_from_json(_example(name))
    assert isinstance(layer, LAYER_KINDS[name].spec_class)
    validate_layer(layer, "layers[0]")
    again = layer_to_json(layer)
    assert again["type"] == name
    assert layer_from_json(again) == layer


@pytest.mark.parametrize(("layer", "fragment"), [
    (S.Dense(w_std=0.0), "layers[0].w_std must be a finite number > 0"),
    (S.Dense(b_std=-1.0), "layers[0].b_std must be a finite number >= 0"),
    (S.Dense(width=0), "layers[0].width must be an integer >= 1"),
    (S.Conv((3, 0)), "layers[0].filter_shape entries must be integers >= 1"),
    (S.Conv((3, 3, 3)), "layers[0].filter_shape must list 1 or 2 integers"),
    (S.Conv((3,), padding="FULL"), "layers[0].padding must be one of"),  # type: ignore[arg-type]
    (S.AvgPool((2,), strides=(0,)), "layers[0].strides entries must be integers >= 1"),
    (S.LayerNorm(eps=0.0), "layers[0].eps must be a finite number > 0"),
    (S.Activation("leaky_relu", float("nan")), "layers[0].negative_slope must be a finite number"),
    (S.Branches(()), "layers[0].branches must list at least one branch"),
    (S.Branches(((S.Dense(w_std=-1.0),),)), "layers[0].branches[0][0].w_std"),
])
def test_core_validation_uses_the_registry_ranges(layer: S.Layer, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        validate_layer(layer, "layers[0]")


def test_check_param_refuses_booleans_for_numbers() -> None:
    param = LAYER_KINDS["dense"].params[0]
    with pytest.raises(ValueError):
        check_param(param, True, "layers[0]")
