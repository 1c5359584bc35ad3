"""``ntk_client.stax`` and ``ntk_client.kernels`` build the contract's JSON, written out by hand here.

Every layer kind of the service's registry has a case (checked), every hand-written JSON is
accepted by the service's own request schema, and what the service cannot express is a
``ValueError`` naming the layer and argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.kernels import spec as core_spec
from core.kernels.registry import LAYER_KINDS
from ntk_client import kernels, stax
from service.schemas.kernels import NetworkKernel

DENSE_DEFAULT = {"type": "dense", "w_std": 1.0, "b_std": None, "width": 1}
RESIDUAL_BRANCH = [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "relu"},
                   {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}]

#: (stax layers before the readout, the hand-written contract layers they stand for)
CASES: list[tuple[str, list[stax.Layer], list[dict[str, Any]]]] = [
    ("dense", [stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu()],
     [{"type": "dense", "w_std": 1.5, "b_std": 0.05, "width": 512}, {"type": "relu"}]),
    ("conv", [stax.Conv(16, (3, 3), strides=(2, 1), padding="SAME", W_std=1.41, b_std=0.1), stax.Relu(),
              stax.Flatten()],
     [{"type": "conv", "filter_shape": [3, 3], "strides": [2, 1], "padding": "SAME", "w_std": 1.41, "b_std": 0.1,
       "width": 16}, {"type": "relu"}, {"type": "flatten"}]),
    ("conv 1-d defaults", [stax.Conv(4, (3,)), stax.GlobalSumPool()],
     [{"type": "conv", "filter_shape": [3], "strides": None, "padding": "VALID", "w_std": 1.0, "b_std": None,
       "width": 4}, {"type": "global_sum_pool"}]),
    ("avg_pool", [stax.Conv(4, (3, 3), padding="CIRCULAR"), stax.AvgPool((2, 2)), stax.GlobalAvgPool()],
     [{"type": "conv", "filter_shape": [3, 3], "strides": None, "padding": "CIRCULAR", "w_std": 1.0, "b_std": None,
       "width": 4}, {"type": "avg_pool", "window_shape": [2, 2], "strides": None, "padding": "VALID"},
      {"type": "global_avg_pool"}]),
    ("sum_pool", [stax.SumPool((2,), strides=(1,), padding="SAME"), stax.Flatten()],
     [{"type": "sum_pool", "window_shape": [2], "strides": [1], "padding": "SAME"}, {"type": "flatten"}]),
    ("layer_norm", [stax.Dense(8), stax.LayerNorm(eps=1e-6), stax.Erf()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "layer_norm", "eps": 1e-6},
      {"type": "erf"}]),
    ("residual (FanInSum)", [stax.Dense(8), stax.FanOut(2),
                             stax.parallel(stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(8)), stax.Identity()),
                             stax.FanInSum()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8},
      {"type": "branches", "branches": [RESIDUAL_BRANCH, []], "merge": "sum"}]),
    ("product (FanInProd)", [stax.Dense(8), stax.FanOut(3), stax.parallel(stax.Sin(), stax.Gelu(), stax.Abs()),
                             stax.FanInProd()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8},
      {"type": "branches", "branches": [[{"type": "sin"}], [{"type": "gelu"}], [{"type": "abs"}]],
       "merge": "product"}]),
    ("FanOut straight into FanInSum", [stax.Dense(8), stax.FanOut(2), stax.FanInSum()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8},
      {"type": "branches", "branches": [[], []], "merge": "sum"}]),
    ("activations", [stax.Dense(8), stax.Sign(), stax.Dense(8), stax.LeakyRelu(0.2), stax.Dense(8),
                     stax.ABRelu(-1.0, 1.0), stax.Dense(8), stax.Identity()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "sign"},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "leaky_relu", "negative_slope": 0.2},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "leaky_relu", "negative_slope": -1.0},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "identity"}]),
    ("numerical activations", [stax.Dense(8), stax.ElementwiseNumerical(np.tanh, deg=25), stax.Dense(8),
                               stax.Elementwise("sigmoid"), stax.Dense(8), stax.Softplus(), stax.Dense(8),
                               stax.Swish(), stax.Dense(8), stax.Tanh()],
     [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "elementwise", "fn": "tanh"},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "elementwise", "fn": "sigmoid"},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "elementwise", "fn": "softplus"},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "elementwise", "fn": "swish"},
      {"type": "dense", "w_std": 1.0, "b_std": None, "width": 8}, {"type": "elementwise", "fn": "tanh"}]),
]


def _types(layers: list[dict[str, Any]]) -> set[str]:
    found = set()
    for layer in layers:
        found.add(layer["type"])
        for branch in layer.get("branches", []):
            found |= _types(branch)
    return found


@pytest.mark.parametrize(("name", "layers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_stax_builds_the_hand_written_json(name: str, layers: list[stax.Layer], expected: list[dict]) -> None:
    spec = stax.serial(*layers, stax.Dense(1))
    want = {"type": "network", "layers": [*expected, DENSE_DEFAULT], "parameterization": "ntk"}
    assert spec.to_json() == want
    NetworkKernel.model_validate(want)  # the service's own schema accepts the hand-written JSON


def test_every_registered_layer_kind_has_a_stax_constructor() -> None:
    covered = set().union(*(_types(expected) for _, _, expected in CASES))
    assert covered == set(LAYER_KINDS), f"layer kinds without a stax case: {set(LAYER_KINDS) - covered}"
    numerical = {layer["fn"] for _, _, expected in CASES for layer in expected if layer["type"] == "elementwise"}
    assert numerical == set(core_spec.NUMERICAL_ACTIVATIONS)


def test_standard_parameterization_and_nesting() -> None:
    block = stax.serial(stax.Dense(64, parameterization="standard"), stax.Relu())
    spec = stax.serial(block, stax.serial(block, stax.Dense(1, W_std=2.0, b_std=0.0, parameterization="standard")))
    assert spec.to_json() == {
        "type": "network", "parameterization": "standard",
        "layers": [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 64}, {"type": "relu"}] * 2
        + [{"type": "dense", "w_std": 2.0, "b_std": 0.0, "width": 1}]}
    assert stax.Dense(3).to_json()["layers"] == [{"type": "dense", "w_std": 1.0, "b_std": None, "width": 3}]
    assert "Dense(w_std=1.0" in repr(stax.serial(stax.Dense(3)))
    assert stax.repeat(block, 2).to_json() == stax.serial(block, block).to_json()
    with pytest.raises(AttributeError, match="no attribute 'Densse'"):
        _ = stax.Densse


@pytest.mark.parametrize(("build", "message"), [
    (lambda: stax.serial(stax.Dense(4), stax.FanOut(2), stax.Dense(1)), "FanOut(2) must be followed by parallel"),
    (lambda: stax.serial(stax.FanOut(2), stax.parallel(stax.Relu(), stax.Relu())), "must be followed by FanInSum"),
    (lambda: stax.serial(stax.FanOut(3), stax.parallel(stax.Relu(), stax.Relu()), stax.FanInSum()),
     "with 2 branches"),
    (lambda: stax.serial(stax.Dense(4), stax.parallel(stax.Relu()), stax.FanInSum()), "must come right after FanOut"),
    (lambda: stax.serial(stax.Dense(4), stax.FanInProd()), "FanInProd() must close"),
    (lambda: stax.serial(stax.Dense(4, parameterization="standard"), stax.Dense(1)), "mix parameterization"),
    (lambda: stax.serial(), "at least one layer"),
    (lambda: stax.Dense(4, W_std=0.0), "W_std must be > 0"),
    (lambda: stax.Dense(4, b_std=-1.0), "b_std must be >= 0"),
    (lambda: stax.Dense(0), "out_dim must be an integer >= 1"),
    (lambda: stax.Dense(4, channel_axis=1), "channel_axis=1 is not supported"),
    (lambda: stax.Dense(4, parameterization="mup"), "parameterization='mup'"),
    (lambda: stax.Conv(4, (3, 3, 3)), "one or two entries"),
    (lambda: stax.Conv(4, (3, 3), padding="REFLECT"), "padding must be one of"),
    (lambda: stax.Conv(4, (3, 3), dimension_numbers=("NCHW", "OIHW", "NCHW")), "dimension_numbers"),
    (lambda: stax.AvgPool((2, 2), normalize_edges=True), "normalize_edges=True"),
    (lambda: stax.LayerNorm(axis=(1, 2, 3)), "axis=(1, 2, 3)"),
    (lambda: stax.LayerNorm(eps=0.0), "eps must be > 0"),
    (lambda: stax.Erf(a=2.0), "Erf: a=2.0"),
    (lambda: stax.Sin(c=0.5), "Sin: c=0.5"),
    (lambda: stax.Gelu(approximate=True), "approximate=True"),
    (lambda: stax.ABRelu(0.0, 2.0), "ABRelu: b=2.0"),
    (lambda: stax.LeakyRelu(float("nan")), "alpha must be a finite number"),
    (lambda: stax.ElementwiseNumerical(lambda x: x**3, deg=10), "never runs code"),
    (lambda: stax.Elementwise("tanh", nngp_fn=lambda c: c), "nngp_fn"),
    (lambda: stax.FanOut(0), "num must be an integer >= 1"),
    (lambda: stax.parallel(), "at least one branch"),
    (lambda: stax.repeat(stax.Relu(), 0), "n must be an integer >= 1"),
    (lambda: stax.serial(stax.FanOut(2), stax.parallel(stax.Dense(4), stax.Dense(4)), stax.FanInConcat()),
     "FanInConcat (neural-tangents) cannot be expressed"),
    (lambda: stax.Dropout(0.5), "Dropout (neural-tangents) cannot be expressed"),
])
def test_what_the_service_cannot_express_is_a_value_error(build, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        built = build()
        built.to_json()


def test_classic_kernels_and_their_outputs() -> None:
    assert kernels.rbf(lengthscale=0.5) == {"type": "rbf", "lengthscale": 0.5}
    assert kernels.laplace(2) == {"type": "laplace", "lengthscale": 2.0}
    assert kernels.polynomial(3, c=0) == {"type": "polynomial", "degree": 3, "c": 0.0}
    assert kernels.linear() == {"type": "linear"}
    assert kernels.two_layer_relu() == {"type": "two_layer_relu"}
    for bad in (lambda: kernels.rbf(0), lambda: kernels.laplace(float("inf")), lambda: kernels.polynomial(0),
                lambda: kernels.polynomial(2, c=-1)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError, match="stax network"):
        kernels.to_json("rbf")  # type: ignore[arg-type]
    # the matrices each kernel type yields are the service's (core's) names, in its order
    core_specs = {"network": core_spec.Network((core_spec.Dense(),)), "two_layer_relu": core_spec.TwoLayerRelu(),
                  "linear": core_spec.Linear(), "polynomial": core_spec.Polynomial(2), "rbf": core_spec.RBF(1.0),
                  "laplace": core_spec.Laplace(1.0)}
    assert set(core_specs) == set(kernels.OUTPUTS)
    for kind, spec in core_specs.items():
        assert kernels.OUTPUTS[kind] == core_spec.output_names(spec)
