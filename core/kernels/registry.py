"""The layer registry: every layer kind of a ``network`` kernel, declared once.

Each ``LayerKind`` names the contract's ``type``, the fields a client may send (with their
ranges: ``Param``), how those fields build the pure spec dataclass of ``spec.py`` and back,
and, keyed by the same ``type``, its rules: the infinite-width rule on a ``PairState``
(``rules.RULES``) and the finite-width layer (``core.empirical.layers.FINITE``).
The service derives its pydantic schemas (and so the OpenAPI document) from ``LAYER_KINDS``;
``validate_layer`` checks the same ranges for callers of ``core`` directly.

Adding a layer: see ``core/kernels/__init__.py``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from core.kernels import spec as S

ParamKind = Literal["float", "int", "ints", "choice", "layers_list"]


@dataclass(frozen=True, slots=True)
class Param:
    """One field of a layer: its kind, default and range (one definition for core and HTTP).

    ``kind``: ``float`` (finite), ``int``, ``ints`` (a list of 1–2 positive integers, one per
    spatial axis), ``choice`` (one of ``choices``), ``layers_list`` (a list of layer lists).
    ``gt``/``ge`` bound numbers (and each entry of ``ints``); ``nullable``: null allowed.
    ``required``: no default.
    """

    name: str
    kind: ParamKind
    doc: str
    default: Any = None
    required: bool = False
    nullable: bool = False
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LayerKind:
    """A layer kind: contract ``type``, its fields, and how to build its spec dataclass."""

    type: str
    doc: str
    params: tuple[Param, ...]
    build: Callable[[Mapping[str, Any]], S.Layer]
    fields: Callable[[S.Layer], dict[str, Any]]
    spec_class: type


# ----------------------------------------------------------------------------- shared fields
_W_STD = Param("w_std", "float", "weight standard deviation (> 0)", 1.0, gt=0)
_B_STD = Param("b_std", "float", "bias standard deviation (≥ 0); null: the layer has no bias parameter",
               None, nullable=True, ge=0)
_WIDTH = Param("width", "int", "output width (channels for conv); needed under standard parameterization",
               None, nullable=True, ge=1, le=2**31 - 1)
_PADDING = Param("padding", "choice", "VALID, SAME (zeros) or CIRCULAR (wrap-around)", "VALID",
                 choices=S.PADDINGS)


def _strides(doc: str) -> Param:
    return Param("strides", "ints", doc, None, nullable=True, ge=1)


def _opt_tuple(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _activation(name: str, doc: str) -> LayerKind:
    return LayerKind(name, doc, (), lambda f, n=name: S.Activation(n), lambda layer: {}, S.Activation)


LAYER_KINDS: dict[str, LayerKind] = {}


def _register(*kinds: LayerKind) -> None:
    for kind in kinds:
        LAYER_KINDS[kind.type] = kind


_register(
    LayerKind(
        "dense",
        "Fully connected layer on the channel (last) axis.",
        (_W_STD, _B_STD, _WIDTH),
        lambda f: S.Dense(float(f.get("w_std", 1.0)), _opt_float(f.get("b_std")), f.get("width")),
        lambda layer: {"w_std": layer.w_std, "b_std": layer.b_std, "width": layer.width},
        S.Dense,
    ),
    LayerKind(
        "conv",
        "Convolution over the spatial axes (stax Conv, NHWC); fan-in = input channels × filter size.",
        (
            Param("filter_shape", "ints", "filter size per spatial axis", required=True, ge=1),
            _strides("stride per spatial axis (default 1)"),
            _PADDING,
            _W_STD,
            _B_STD,
            _WIDTH,
        ),
        lambda f: S.Conv(
            tuple(int(v) for v in f["filter_shape"]), _opt_tuple(f.get("strides")), f.get("padding", "VALID"),
            float(f.get("w_std", 1.0)), _opt_float(f.get("b_std")), f.get("width"),
        ),
        lambda layer: {"filter_shape": list(layer.filter_shape),
                       "strides": None if layer.strides is None else list(layer.strides),
                       "padding": layer.padding, "w_std": layer.w_std, "b_std": layer.b_std,
                       "width": layer.width},
        S.Conv,
    ),
)

for _name, _cls, _doc in (
    ("avg_pool", S.AvgPool, "Average pooling (stax AvgPool, normalize_edges=False)."),
    ("sum_pool", S.SumPool, "Sum pooling (stax SumPool)."),
):
    _register(LayerKind(
        _name,
        _doc,
        (Param("window_shape", "ints", "window size per spatial axis", required=True, ge=1),
         _strides("stride per spatial axis (default: the window)"), _PADDING),
        lambda f, c=_cls: c(tuple(int(v) for v in f["window_shape"]), _opt_tuple(f.get("strides")),
                            f.get("padding", "VALID")),
        lambda layer: {"window_shape": list(layer.window_shape),
                       "strides": None if layer.strides is None else list(layer.strides),
                       "padding": layer.padding},
        _cls,
    ))

for _name, _cls, _doc in (
    ("global_avg_pool", S.GlobalAvgPool, "Mean over all spatial positions (stax GlobalAvgPool)."),
    ("global_sum_pool", S.GlobalSumPool, "Sum over all spatial positions (stax GlobalSumPool)."),
    ("flatten", S.Flatten, "Positions and channels into one feature axis (stax Flatten)."),
):
    _register(LayerKind(_name, _doc, (), lambda f, c=_cls: c(), lambda layer: {}, _cls))

_register(
    LayerKind(
        "layer_norm",
        "Normalisation over the channel axis (stax LayerNorm(axis=-1)); needs Gaussian inputs "
        "(after dense/conv, not after a nonlinearity).",
        (Param("eps", "float", "added to the variance (> 0)", 1e-12, gt=0),),
        lambda f: S.LayerNorm(float(f.get("eps", 1e-12))),
        lambda layer: {"eps": layer.eps},
        S.LayerNorm,
    ),
    LayerKind(
        "branches",
        "FanOut into the branches (an empty list is the identity), then FanInSum or FanInProd. "
        "A residual block is {\"type\": \"branches\", \"merge\": \"sum\", \"branches\": [[...], []]}.",
        (
            Param("branches", "layers_list", "the branches, each a list of layers", required=True),
            Param("merge", "choice", "sum (FanInSum) or product (FanInProd)", "sum", choices=("sum", "product")),
        ),
        lambda f: S.Branches(tuple(tuple(b) for b in f["branches"]), f.get("merge", "sum")),
        lambda layer: {"branches": [list(b) for b in layer.branches], "merge": layer.merge},
        S.Branches,
    ),
    _activation("relu", "ReLU, max(x, 0)."),
    _activation("abs", "Absolute value |x|."),
    _activation("erf", "Error function erf(x)."),
    _activation("sign", "Sign function; its derivative kernel is 0 (as in neural-tangents)."),
    _activation("gelu", "Exact GELU, x·Φ(x)."),
    _activation("sin", "sin(x)."),
    _activation("identity", "The identity."),
    LayerKind(
        "leaky_relu",
        "Leaky ReLU: x for x ≥ 0, negative_slope·x otherwise.",
        (Param("negative_slope", "float", "slope for x < 0 (any finite real)", 0.01),),
        lambda f: S.Activation("leaky_relu", float(f.get("negative_slope", 0.01))),
        lambda layer: {"negative_slope": layer.negative_slope},
        S.Activation,
    ),
    LayerKind(
        "elementwise",
        "A named function without a closed-form dual kernel, computed numerically (Hermite series with a "
        "rigorous truncation bound; see core/kernels/quadrature.py).",
        (Param("fn", "choice", "the function", required=True, choices=S.NUMERICAL_ACTIVATIONS),),
        lambda f: S.Activation(f["fn"]),
        lambda layer: {"fn": layer.name},
        S.Activation,
    ),
)


def kind_of(layer: S.Layer) -> LayerKind:
    """The registered kind of a spec dataclass instance."""
    if isinstance(layer, S.Activation):
        name = "elementwise" if layer.name in S.NUMERICAL_ACTIVATIONS else layer.name
        if name not in LAYER_KINDS:
            raise ValueError(f"unknown activation {layer.name!r}")
        return LAYER_KINDS[name]
    for kind in LAYER_KINDS.values():
        if type(layer) is kind.spec_class:
            return kind
    raise ValueError(f"not a layer: {layer!r}")


def layer_to_json(layer: S.Layer) -> dict[str, Any]:
    """The contract's JSON form of a layer (nested branches included)."""
    kind = kind_of(layer)
    out: dict[str, Any] = {"type": kind.type}
    for key, value in kind.fields(layer).items():
        if key == "branches":
            value = [[layer_to_json(sub) for sub in branch] for branch in value]
        out[key] = value
    return out


def layer_from_json(obj: Mapping[str, Any]) -> S.Layer:
    """A layer from its contract JSON form (trusted input: the service validates with pydantic first)."""
    kind = LAYER_KINDS[obj["type"]]
    fields = {key: value for key, value in obj.items() if key != "type"}
    if "branches" in fields:
        fields["branches"] = [[layer_from_json(sub) for sub in branch] for branch in fields["branches"]]
    return kind.build(fields)


# ---------------------------------------------------------------------------------- checks
def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _in_range(param: Param, value: float) -> bool:
    return not (
        (param.gt is not None and not value > param.gt)
        or (param.ge is not None and not value >= param.ge)
        or (param.le is not None and not value <= param.le)
    )


def _range_text(param: Param) -> str:
    parts = [f"> {param.gt:g}" if param.gt is not None else "", f">= {param.ge:g}" if param.ge is not None else "",
             f"<= {param.le:g}" if param.le is not None else ""]
    return " and ".join(p for p in parts if p) or "finite"


def check_param(param: Param, value: Any, where: str) -> None:
    """Raise ``ValueError`` naming ``where.param`` if ``value`` breaks ``param``'s rule."""
    name = f"{where}.{param.name}"
    if value is None:
        if param.nullable:
            return
        raise ValueError(f"{name} is required" if param.required else f"{name} must not be null")
    if param.kind == "float":
        if not _is_real(value) or not _in_range(param, float(value)):
            raise ValueError(f"{name} must be a finite number {_range_text(param)}, got {value!r}")
    elif param.kind == "int":
        if not _is_int(value) or not _in_range(param, int(value)):
            raise ValueError(f"{name} must be an integer {_range_text(param)}, got {value!r}")
    elif param.kind == "ints":
        if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 2:
            raise ValueError(f"{name} must list 1 or 2 integers (one per spatial axis), got {value!r}")
        if not all(_is_int(v) and _in_range(param, int(v)) for v in value):
            raise ValueError(f"{name} entries must be integers {_range_text(param)}, got {value!r}")
    elif param.kind == "choice" and value not in param.choices:
        raise ValueError(f"{name} must be one of {list(param.choices)}, got {value!r}")


def validate_layer(layer: S.Layer, where: str) -> None:
    """Field ranges of ``layer`` (and of the layers inside its branches); ``ValueError`` otherwise."""
    kind = kind_of(layer)
    values = kind.fields(layer)
    for param in kind.params:
        if param.kind == "layers_list":
            branches = values[param.name]
            if not branches:
                raise ValueError(f"{where}.{param.name} must list at least one branch")
            for b, branch in enumerate(branches):
                for i, sub in enumerate(branch):
                    validate_layer(sub, f"{where}.{param.name}[{b}][{i}]")
        else:
            check_param(param, values.get(param.name), where)
