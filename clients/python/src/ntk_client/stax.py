"""neural-tangents' ``stax`` names and arguments, building the service's ``network`` kernel JSON.

Every layer the service accepts has its neural-tangents constructor here, with the same
arguments (widths such as ``Dense(512)`` are kept: they matter under ``parameterization=
"standard"`` and are ignored by infinite-width kernels in NTK parameterization)::

    spec = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))
    spec.to_json()   # {"type": "network", "layers": [{"type": "dense", ...}, ...], "parameterization": "ntk"}

Branching follows neural-tangents: ``serial(FanOut(n), parallel(b_1, ..., b_n), FanInSum())`` (or
``FanInProd()``) is the contract's ``{"type": "branches", "branches": [...], "merge": ...}``; a branch
that is only ``Identity()`` (or an empty ``serial()``) is the identity branch ``[]``, so a residual
block is ``serial(FanOut(2), parallel(serial(Dense(512), Relu(), Dense(512)), Identity()), FanInSum())``.
What the service cannot express (a ``FanOut`` not followed by ``parallel`` and a fan-in, an
argument value other than neural-tangents' default where the service has no such option, code
passed as an activation) raises ``ValueError`` naming the layer and argument.

Unlike neural-tangents, the constructors return :class:`Layer` objects, not ``(init_fn, apply_fn,
kernel_fn)`` triples: pass them to :meth:`ntk_client.Client.kernel_fn` and the other methods.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "Abs", "ABRelu", "AvgPool", "Conv", "Dense", "Elementwise", "ElementwiseNumerical", "Erf", "FanInProd",
    "FanInSum", "FanOut", "Flatten", "Gelu", "GlobalAvgPool", "GlobalSumPool", "Identity", "Layer", "LayerNorm",
    "LeakyRelu", "Network", "Relu", "Sigmoid", "Sign", "Sin", "Softplus", "SumPool", "Swish", "Tanh", "parallel",
    "repeat", "serial",
]

PADDINGS = ("VALID", "SAME", "CIRCULAR")
PARAMETERIZATIONS = ("ntk", "standard")
#: Named functions the service evaluates numerically (``elementwise`` layers), by the names a
#: Python function may carry (``np.tanh``, ``scipy.special.expit``, ``jax.nn.silu`` …).
NUMERICAL_ACTIVATIONS = {"tanh": "tanh", "sigmoid": "sigmoid", "expit": "sigmoid", "softplus": "softplus",
                         "swish": "swish", "silu": "swish"}


class Layer:
    """A stax layer or combinator. ``to_json()`` is the ``network`` kernel of this layer alone."""

    def to_json(self) -> dict[str, Any]:
        return serial(self).to_json()

    def _items(self) -> tuple[Layer, ...]:
        return (self,)


class _Leaf(Layer):
    """One contract layer: its JSON and the parameterization it asks for (dense/conv only)."""

    def __init__(self, name: str, json: dict[str, Any], parameterization: str | None = None) -> None:
        self.name = name
        self.json = json
        self.parameterization = parameterization

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in self.json.items() if key != "type")
        return f"stax.{self.name}({fields})"


class _FanOut(Layer):
    def __init__(self, num: int) -> None:
        self.num = num

    def __repr__(self) -> str:
        return f"stax.FanOut({self.num})"


class _FanIn(Layer):
    def __init__(self, merge: str, name: str) -> None:
        self.merge = merge
        self.name = name

    def __repr__(self) -> str:
        return f"stax.{self.name}()"


class _Parallel(Layer):
    def __init__(self, branches: tuple[Layer, ...]) -> None:
        self.branches = branches

    def __repr__(self) -> str:
        return f"stax.parallel({', '.join(map(repr, self.branches))})"


class Network(Layer):
    """``serial(...)``: layers applied in order; ``to_json()`` gives the contract's ``network`` kernel."""

    def __init__(self, items: tuple[Layer, ...]) -> None:
        self.items = items

    def _items(self) -> tuple[Layer, ...]:
        return self.items

    def __repr__(self) -> str:
        return f"stax.serial({', '.join(map(repr, self.items))})"

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The contract's ``layers`` list."""
        return _resolve(self.items, "serial")

    @property
    def parameterization(self) -> str:
        """``"ntk"`` or ``"standard"``: what the dense/conv layers ask for (all must agree)."""
        found = sorted(_parameterizations(self.items))
        if len(found) > 1:
            raise ValueError(f"layers mix parameterization {found}; the service applies one parameterization to the "
                             "whole network: give every Dense/Conv the same one")
        return found[0] if found else "ntk"

    def to_json(self) -> dict[str, Any]:
        layers = self.layers
        if not layers:
            raise ValueError("a network needs at least one layer (e.g. end with stax.Dense(1))")
        return {"type": "network", "layers": layers, "parameterization": self.parameterization}


def _parameterizations(items: Sequence[Layer]) -> set[str]:
    found: set[str] = set()
    for item in items:
        if isinstance(item, _Leaf) and item.parameterization is not None:
            found.add(item.parameterization)
        elif isinstance(item, _Parallel):
            for branch in item.branches:
                found |= _parameterizations(branch._items())
        elif isinstance(item, Network):
            found |= _parameterizations(item.items)
    return found


def _resolve(items: Sequence[Layer], where: str) -> list[dict[str, Any]]:
    """The contract's layer list of a sequence of stax items (FanOut → parallel → FanIn grouped)."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(items):
        item = items[i]
        if isinstance(item, _Leaf):
            out.append(item.json)
            i += 1
        elif isinstance(item, _FanOut):
            following = items[i + 1] if i + 1 < len(items) else None
            if isinstance(following, _FanIn):
                branches: list[list[dict[str, Any]]] = [[] for _ in range(item.num)]
                fan_in, i = following, i + 2
            elif isinstance(following, _Parallel):
                if len(following.branches) != item.num:
                    raise ValueError(f"{where}: FanOut({item.num}) is followed by parallel(...) with "
                                     f"{len(following.branches)} branches; the counts must match")
                fan_in = items[i + 2] if i + 2 < len(items) else None
                if not isinstance(fan_in, _FanIn):
                    raise ValueError(f"{where}: FanOut({item.num}), parallel(...) must be followed by FanInSum() or "
                                     "FanInProd(); the service has no other way to merge branches")
                branches = [_branch(b, f"{where}.parallel[{k}]") for k, b in enumerate(following.branches)]
                i += 3
            else:
                raise ValueError(f"{where}: FanOut({item.num}) must be followed by parallel(...) with {item.num} "
                                 "branches (or directly by FanInSum()/FanInProd()) and then a fan-in")
            out.append({"type": "branches", "branches": branches, "merge": fan_in.merge})
        elif isinstance(item, _Parallel):
            raise ValueError(f"{where}: parallel(...) must come right after FanOut(n) (and before FanInSum() or "
                             "FanInProd()): the service's networks have one input")
        elif isinstance(item, _FanIn):
            raise ValueError(f"{where}: {item.name}() must close a FanOut(n), parallel(...) group")
        else:  # pragma: no cover - every Layer subclass is handled above
            raise TypeError(f"{where}: not a stax layer: {item!r}")
    return out


def _branch(layer: Layer, where: str) -> list[dict[str, Any]]:
    layers = _resolve(layer._items(), where)
    return [] if all(entry == {"type": "identity"} for entry in layers) else layers


# ---------------------------------------------------------------------------------- combinators
def serial(*layers: Layer) -> Network:
    """Layers in sequence (stax ``serial``); nested ``serial`` calls are flattened."""
    items: list[Layer] = []
    for k, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {k} is not a stax layer: {layer!r}")
        items.extend(layer._items())
    return Network(tuple(items))


def repeat(layer: Layer, n: int) -> Network:
    """``layer`` applied ``n`` times in sequence (stax ``repeat``)."""
    return serial(*[layer] * _int("repeat", "n", n, minimum=1))


def parallel(*layers: Layer) -> Layer:
    """Branches applied to the outputs of a ``FanOut`` (stax ``parallel``); each branch is a layer or serial."""
    if not layers:
        raise ValueError("parallel: needs at least one branch")
    for k, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"parallel: branch {k} is not a stax layer: {layer!r}")
    return _Parallel(tuple(layers))


def FanOut(num: int) -> Layer:
    """Copy the input into ``num`` branches (stax ``FanOut``)."""
    return _FanOut(_int("FanOut", "num", num, minimum=1))


def FanInSum() -> Layer:
    """Sum the branches (stax ``FanInSum``): the contract's ``merge: "sum"``."""
    return _FanIn("sum", "FanInSum")


def FanInProd() -> Layer:
    """Multiply the branches elementwise (stax ``FanInProd``): ``merge: "product"``."""
    return _FanIn("product", "FanInProd")


# ---------------------------------------------------------------------------------- argument checks
def _real(layer: str, name: str, value: Any, *, gt: float | None = None, ge: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{layer}: {name} must be a finite number, got {value!r}")
    if (gt is not None and not value > gt) or (ge is not None and not value >= ge):
        raise ValueError(f"{layer}: {name} must be {'> ' + str(gt) if gt is not None else '>= ' + str(ge)}, "
                         f"got {value!r}")
    return float(value)


def _int(layer: str, name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _shape(layer: str, name: str, value: Any) -> list[int]:
    values = [value] if isinstance(value, numbers.Integral) else list(value)
    if not 1 <= len(values) <= 2:
        raise ValueError(f"{layer}: {name} must have one or two entries (one per spatial axis), got {value!r}")
    return [_int(layer, name, v, minimum=1) for v in values]


def _padding(layer: str, value: Any) -> str:
    text = str(getattr(value, "value", value)).upper()  # a string, or neural-tangents' Padding enum
    if text not in PADDINGS:
        raise ValueError(f"{layer}: padding must be one of {list(PADDINGS)}, got {value!r}")
    return text


def _only(layer: str, name: str, value: Any, allowed: Sequence[Any], why: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"{layer}: {name}={value!r} is not supported by the service (only {allowed[0]!r})"
                         + (f": {why}" if why else ""))


def _axes(layer: str, batch_axis: int, channel_axis: int) -> None:
    _only(layer, "batch_axis", batch_axis, (0,), "inputs are n × ... with the batch first")
    _only(layer, "channel_axis", channel_axis, (-1,), "inputs are channels-last (NHWC)")


def _weights(layer: str, W_std: float, b_std: float | None, parameterization: str, s: Any) -> dict[str, Any]:
    _only(layer, "parameterization", parameterization, PARAMETERIZATIONS)
    _only(layer, "s", tuple(s), ((1, 1),), "no width-scaling exponents")
    return {"w_std": _real(layer, "W_std", W_std, gt=0),
            "b_std": None if b_std is None else _real(layer, "b_std", b_std, ge=0)}


# ---------------------------------------------------------------------------------- layers
def Dense(out_dim: int, W_std: float = 1.0, b_std: float | None = None, batch_axis: int = 0,
          channel_axis: int = -1, parameterization: str = "ntk", s: Sequence[int] = (1, 1)) -> Layer:
    """Fully connected layer with ``out_dim`` outputs (stax ``Dense``): ``{"type": "dense"}``.

    ``b_std=None``: no bias parameter. ``out_dim`` is sent as ``width`` (used under standard parameterization).
    """
    _axes("Dense", batch_axis, channel_axis)
    weights = _weights("Dense", W_std, b_std, parameterization, s)
    return _Leaf("Dense", {"type": "dense", **weights, "width": _int("Dense", "out_dim", out_dim, minimum=1)},
                 parameterization)


def Conv(out_chan: int, filter_shape: Sequence[int], strides: Sequence[int] | None = None, padding: str = "VALID",
         W_std: float = 1.0, b_std: float | None = None, dimension_numbers: Any = None,
         parameterization: str = "ntk", s: Sequence[int] = (1, 1)) -> Layer:
    """Convolution (stax ``Conv``, NHWC): ``{"type": "conv"}``; ``out_chan`` is sent as ``width``."""
    _only("Conv", "dimension_numbers", dimension_numbers, (None,), "inputs are channels-last (NHWC)")
    weights = _weights("Conv", W_std, b_std, parameterization, s)
    return _Leaf("Conv", {"type": "conv", "filter_shape": _shape("Conv", "filter_shape", filter_shape),
                          "strides": None if strides is None else _shape("Conv", "strides", strides),
                          "padding": _padding("Conv", padding), **weights,
                          "width": _int("Conv", "out_chan", out_chan, minimum=1)}, parameterization)


def _pool(name: str, kind: str, window_shape: Sequence[int], strides: Sequence[int] | None, padding: str
          ) -> Layer:
    return _Leaf(name, {"type": kind, "window_shape": _shape(name, "window_shape", window_shape),
                        "strides": None if strides is None else _shape(name, "strides", strides),
                        "padding": _padding(name, padding)})


def AvgPool(window_shape: Sequence[int], strides: Sequence[int] | None = None, padding: str = "VALID",
            normalize_edges: bool = False, batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Average pooling (stax ``AvgPool``; padded zeros count, ``normalize_edges=False``): ``avg_pool``."""
    _only("AvgPool", "normalize_edges", normalize_edges, (False,))
    _axes("AvgPool", batch_axis, channel_axis)
    return _pool("AvgPool", "avg_pool", window_shape, strides, padding)


def SumPool(window_shape: Sequence[int], strides: Sequence[int] | None = None, padding: str = "VALID",
            batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Sum pooling (stax ``SumPool``): ``sum_pool``."""
    _axes("SumPool", batch_axis, channel_axis)
    return _pool("SumPool", "sum_pool", window_shape, strides, padding)


def GlobalAvgPool(batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Mean over all spatial positions (stax ``GlobalAvgPool``): ``global_avg_pool``."""
    _axes("GlobalAvgPool", batch_axis, channel_axis)
    return _Leaf("GlobalAvgPool", {"type": "global_avg_pool"})


def GlobalSumPool(batch_axis: int = 0, channel_axis: int = -1) -> Layer:
    """Sum over all spatial positions (stax ``GlobalSumPool``): ``global_sum_pool``."""
    _axes("GlobalSumPool", batch_axis, channel_axis)
    return _Leaf("GlobalSumPool", {"type": "global_sum_pool"})


def Flatten(batch_axis: int = 0, batch_axis_out: int = 0) -> Layer:
    """Positions and channels into one axis (stax ``Flatten``): ``flatten``."""
    _only("Flatten", "batch_axis", batch_axis, (0,))
    _only("Flatten", "batch_axis_out", batch_axis_out, (0,))
    return _Leaf("Flatten", {"type": "flatten"})


def LayerNorm(axis: int | Sequence[int] = -1, eps: float = 1e-12, batch_axis: int = 0, channel_axis: int = -1
              ) -> Layer:
    """Normalisation over the channel axis (stax ``LayerNorm(axis=-1)``): ``layer_norm``."""
    _only("LayerNorm", "axis", axis if isinstance(axis, int) else tuple(axis), (-1, (-1,)),
          "the service normalises over the channel axis")
    _axes("LayerNorm", batch_axis, channel_axis)
    return _Leaf("LayerNorm", {"type": "layer_norm", "eps": _real("LayerNorm", "eps", eps, gt=0)})


def _activation(name: str, kind: str) -> Layer:
    return _Leaf(name, {"type": kind})


def Relu(do_stabilize: bool = False) -> Layer:
    """``max(x, 0)`` (stax ``Relu``)."""
    return _activation("Relu", "relu")


def LeakyRelu(alpha: float, do_stabilize: bool = False) -> Layer:
    """``x`` for ``x ≥ 0``, ``alpha·x`` otherwise (stax ``LeakyRelu``): ``negative_slope = alpha``."""
    return _Leaf("LeakyRelu", {"type": "leaky_relu", "negative_slope": _real("LeakyRelu", "alpha", alpha)})


def ABRelu(a: float, b: float, do_stabilize: bool = False) -> Layer:
    """``a·min(x, 0) + b·max(x, 0)`` (stax ``ABRelu``) for ``b = 1``: the service's ``leaky_relu``."""
    _only("ABRelu", "b", _real("ABRelu", "b", b), (1.0,), "use b = 1 (a leaky ReLU with negative_slope a)")
    return _Leaf("ABRelu", {"type": "leaky_relu", "negative_slope": _real("ABRelu", "a", a)})


def Abs(do_stabilize: bool = False) -> Layer:
    """``|x|`` (stax ``Abs``)."""
    return _activation("Abs", "abs")


def Erf(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """``erf(x)`` (stax ``Erf`` with its defaults; other ``a, b, c`` are not offered by the service)."""
    for name, value, default in (("a", a, 1.0), ("b", b, 1.0), ("c", c, 0.0)):
        _only("Erf", name, value, (default,))
    return _activation("Erf", "erf")


def Sign() -> Layer:
    """``sign(x)`` (stax ``Sign``)."""
    return _activation("Sign", "sign")


def Gelu(approximate: bool = False) -> Layer:
    """Exact GELU ``x·Φ(x)`` (stax ``Gelu``; the tanh approximation is not offered)."""
    _only("Gelu", "approximate", approximate, (False,))
    return _activation("Gelu", "gelu")


def Sin(a: float = 1.0, b: float = 1.0, c: float = 0.0) -> Layer:
    """``sin(x)`` (stax ``Sin`` with its defaults)."""
    for name, value, default in (("a", a, 1.0), ("b", b, 1.0), ("c", c, 0.0)):
        _only("Sin", name, value, (default,))
    return _activation("Sin", "sin")


def Identity() -> Layer:
    """The identity (stax ``Identity``); as a whole ``parallel`` branch it is the identity branch ``[]``."""
    return _activation("Identity", "identity")


def _numerical_name(layer: str, fn: str | Callable[..., Any]) -> str:
    name = fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))
    if name not in NUMERICAL_ACTIVATIONS:
        raise ValueError(f"{layer}: fn must name one of {sorted(set(NUMERICAL_ACTIVATIONS.values()))} (a string or a "
                         f"function of that name); the service never runs code a client sends, got {fn!r}")
    return NUMERICAL_ACTIVATIONS[name]


def ElementwiseNumerical(fn: str | Callable[..., Any], deg: int = 25, df: Any = None) -> Layer:
    """A named nonlinearity computed numerically (stax ``ElementwiseNumerical``): ``elementwise``.

    ``fn`` is ``"tanh"``, ``"sigmoid"``, ``"softplus"`` or ``"swish"`` (or a function with such a
    ``__name__``, e.g. ``np.tanh``: only the name is sent). ``deg`` is accepted for compatibility;
    the service chooses its quadrature degree with a rigorous error bound.
    """
    _only("ElementwiseNumerical", "df", df, (None,), "the service differentiates the named function itself")
    return _Leaf("ElementwiseNumerical", {"type": "elementwise",
                                          "fn": _numerical_name("ElementwiseNumerical", fn)})


def Elementwise(fn: str | Callable[..., Any], nngp_fn: Any = None, d_nngp_fn: Any = None) -> Layer:
    """stax ``Elementwise`` for the named functions of :func:`ElementwiseNumerical` (no custom kernels)."""
    _only("Elementwise", "nngp_fn", nngp_fn, (None,), "the service computes the dual kernel itself")
    _only("Elementwise", "d_nngp_fn", d_nngp_fn, (None,), "the service computes the dual kernel itself")
    return _Leaf("Elementwise", {"type": "elementwise", "fn": _numerical_name("Elementwise", fn)})


def Tanh() -> Layer:
    """``tanh`` (numerical; shorthand for ``ElementwiseNumerical("tanh")``)."""
    return ElementwiseNumerical("tanh")


def Sigmoid() -> Layer:
    """The logistic sigmoid (numerical; neural-tangents' ``Sigmoid_like`` is an erf approximation instead)."""
    return ElementwiseNumerical("sigmoid")


def Softplus() -> Layer:
    """``log(1 + eˣ)`` (numerical)."""
    return ElementwiseNumerical("softplus")


def Swish() -> Layer:
    """``x·sigmoid(x)`` (SiLU; numerical)."""
    return ElementwiseNumerical("swish")


#: neural-tangents stax layers the service does not offer, with what to use instead (if anything).
UNSUPPORTED = {
    "FanInConcat": "branches merge by FanInSum() or FanInProd() only",
    "Dropout": "infinite-width kernels here are of networks without dropout",
    "Aggregate": "no graph layers", "GlobalSelfAttention": "no attention layers", "DotGeneral": "no DotGeneral",
    "ConvTranspose": "use Conv", "ConvLocal": "use Conv (weights shared across positions)",
    "ImageResize": "no resizing layers", "Index": "no indexing layers",
    "Sigmoid_like": "use ElementwiseNumerical('sigmoid') (the exact logistic sigmoid)",
    "Exp": "no exp activation", "ExpNormalized": "no exp activation", "Cos": "use Sin", "Rbf": "no rbf activation",
    "Gaussian": "no gaussian activation", "Gabor": "no gabor activation", "Monomial": "no monomial activations",
    "RectifiedMonomial": "use Relu for degree 1", "Polynomial": "use ntk_client.kernels.polynomial for the kernel",
    "Hermite": "no Hermite activations", "Electrostatic": "no electrostatic kernel",
}


def __getattr__(name: str) -> Callable[..., Layer]:
    """neural-tangents names the service lacks: calling one raises ``ValueError`` saying why."""
    if name not in UNSUPPORTED:
        raise AttributeError(f"module 'ntk_client.stax' has no attribute {name!r}")

    def unsupported(*args: Any, **kwargs: Any) -> Layer:
        raise ValueError(f"stax.{name} (neural-tangents) cannot be expressed by the service: {UNSUPPORTED[name]}")

    return unsupported
