"""Finite-width layers: one forward pass and one backward pass (VJP) per registry type.

``FINITE`` is keyed like ``core.kernels.registry.LAYER_KINDS`` (``kind_of(layer).type``). Every
entry plans a layer for an input shape (``plan``: output shape, parameter layout), runs it
forward on a batch and runs its vector–Jacobian product backward. Arrays are NHWC: ``(N, C)``,
``(N, L, C)`` or ``(N, H, W, C)``; every example is independent of the others.

Conventions (the request's ``width`` wins over the spec's ``width`` fields):

- ``dense``: ``z = w_mult·h Wᵀ + b_mult·b`` on the channel axis at every position (a 1×1 conv),
  ``W`` stored ``(fan_out, fan_in)``, ``fan_in`` = input channels;
- ``conv``: the same on patches, ``W`` stored ``(fan_out, *filter_shape, C_in)`` (a patch is
  ``(*filter_shape, C_in)`` in row-major order), ``fan_in = C_in·filter size``, weights shared
  over positions; VALID/SAME (zeros)/CIRCULAR (wrap-around) padding and output sizes from
  ``core.kernels.shapes.window_geometry``;
- NTK parameterization: ``w_mult = w_std/√fan_in``, ``b_mult = b_std``, ``W, b ~ N(0, 1)``;
  standard: ``w_mult = b_mult = 1``, ``W ~ N(0, w_std²/fan_in)``, ``b ~ N(0, b_std²)``;
  ``b_std = None``: no bias parameter (``b_std = 0``: a bias that exists and is trained);
- ``avg_pool``/``sum_pool``: window sums (÷ the full window for averages: padded zeros count,
  ``normalize_edges=False``); ``flatten``: reshape to ``(N, P·C)``; global pools: mean/sum over
  positions; ``layer_norm``: ``(h − mean_c h)/√(var_c h + eps)`` over the channel axis;
- ``branches``: every branch on the same input, then the elementwise sum or product;
- activations: φ elementwise, strict derivatives at kinks (``core.empirical.activations``).

The backward pass calls ``sink.affine(node, params, h, delta)`` at every dense/conv node with its
input ``h`` and ``delta = ∂(Σ g·out)/∂z`` at its output: the empirical NTK and the parameter
gradients are sinks (``core.empirical.ntk``, ``core.empirical.network``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from core.empirical.activations import check_activation, dphi, phi
from core.kernels import spec as S
from core.kernels.registry import kind_of
from core.kernels.shapes import window_geometry

#: Most entries of one block of conv patches (examples are processed in chunks below it).
PATCH_ENTRIES = 2**22


@dataclass(frozen=True, slots=True)
class FShape:
    """One example's representation: ``spatial`` extent and ``channels``."""

    spatial: tuple[int, ...]
    channels: int

    @property
    def positions(self) -> int:
        return math.prod(self.spatial)

    @property
    def size(self) -> int:
        return self.positions * self.channels

    def array(self, n: int) -> tuple[int, ...]:
        return (n, *self.spatial, self.channels)


@dataclass(frozen=True, slots=True)
class Affine:
    """Parameter layout and multipliers of a dense/conv node (see the module docstring).

    ``prior_w_var = w_std²/fan_in`` and ``prior_b_var = b_std²`` (0 without a bias) are the
    variances of the effective weights and bias (the empirical NNGP uses the readout's).
    """

    weight_shape: tuple[int, ...]
    fan_in: int
    fan_out: int
    w_mult: float
    b_mult: float
    has_bias: bool
    w_init: float
    b_init: float
    prior_w_var: float
    prior_b_var: float


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """A planned layer: its kind (registry type), spec, location, shapes and layout.

    ``index`` is the node's slot in ``Params.weights``/``biases`` (dense/conv only);
    ``window``/``strides``/``geometry`` (per spatial axis ``(out, pad_lo, pad_hi)``) describe
    conv and pooling windows; ``branches`` holds the planned branches of a ``branches`` node.
    """

    kind: str
    layer: Any
    where: str
    shape_in: FShape
    shape_out: FShape
    affine: Affine | None = None
    index: int = -1
    window: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    padding: str = "VALID"
    geometry: tuple[tuple[int, int, int], ...] = ()
    branches: tuple[tuple[Node, ...], ...] = ()


@dataclass
class PlanContext:
    """What planning needs: the parameterization, the hidden width, the dense/conv nodes so far."""

    parameterization: str
    width: int
    affine: list[Node] = field(default_factory=list)


class Sink(Protocol):
    """Receives each dense/conv node's input and output signal during a backward pass."""

    def affine(self, node: Node, params: Any, h: np.ndarray, delta: np.ndarray) -> None: ...


def affine_constants(parameterization: str, w_std: float, b_std: float | None, fan_in: int
                     ) -> tuple[float, float, bool, float, float, float, float]:
    """``(w_mult, b_mult, has_bias, w_init, b_init, prior_w_var, prior_b_var)``."""
    has_bias = b_std is not None
    b = float(b_std) if has_bias else 0.0
    w = float(w_std)
    if parameterization == "ntk":
        w_mult, b_mult, w_init, b_init = w / math.sqrt(fan_in), b, 1.0, 1.0
    else:
        w_mult, b_mult, w_init, b_init = 1.0, 1.0, w / math.sqrt(fan_in), b
    if not has_bias:
        b_mult = b_init = 0.0
    return w_mult, b_mult, has_bias, w_init, b_init, w * w / fan_in, b * b


# --------------------------------------------------------------------------- windows
def _pad(h: np.ndarray, node: Node) -> np.ndarray:
    """``h`` padded on its spatial axes (zeros, or wrapped for CIRCULAR)."""
    widths = [(0, 0)] + [(lo, hi) for _, lo, hi in node.geometry] + [(0, 0)]
    if not any(lo or hi for lo, hi in widths):
        return h
    return np.pad(h, widths, mode="wrap" if node.padding == "CIRCULAR" else "constant")


def _unpad(g: np.ndarray, node: Node) -> np.ndarray:
    """Adjoint of :func:`_pad`: crop (zeros) or fold the wrapped borders back (CIRCULAR)."""
    for axis, ((_, lo, hi), size) in enumerate(zip(node.geometry, node.shape_in.spatial), start=1):
        if not (lo or hi):
            continue
        if node.padding != "CIRCULAR":
            g = np.take(g, np.arange(lo, lo + size), axis=axis)
            continue
        shape = list(g.shape)
        shape[axis] = size
        out = np.zeros(shape, dtype=g.dtype)
        i, total = 0, g.shape[axis]
        while i < total:
            start = (i - lo) % size
            length = min(size - start, total - i)
            dst = [slice(None)] * g.ndim
            src = [slice(None)] * g.ndim
            dst[axis], src[axis] = slice(start, start + length), slice(i, i + length)
            out[tuple(dst)] += g[tuple(src)]
            i += length
        g = out
    return g


def _offsets(node: Node) -> Iterator[tuple[int, ...]]:
    return iter(np.ndindex(*node.window))


def _window(a: np.ndarray, node: Node, offset: tuple[int, ...]) -> np.ndarray:
    """The view of padded ``a`` that window offset ``offset`` contributes to every output position."""
    index = [slice(None)]
    for o, s, (out, _, _) in zip(offset, node.strides, node.geometry):
        index.append(slice(o, o + s * (out - 1) + 1, s))
    index.append(slice(None))
    return a[tuple(index)]


def patches(node: Node, hpad: np.ndarray) -> np.ndarray:
    """Conv patches ``(N, P_out, filter·C_in)`` of padded inputs (order: offsets, then channels)."""
    n = hpad.shape[0]
    parts = [_window(hpad, node, off) for off in _offsets(node)]
    stacked = np.stack(parts, axis=-2)
    return stacked.reshape(n, node.shape_out.positions, node.affine.fan_in)


def example_chunk(node: Node) -> int:
    """Examples per block of conv patches (at least 1)."""
    return max(1, PATCH_ENTRIES // max(1, node.shape_out.positions * node.affine.fan_in))


class Features:
    """The inputs a dense/conv node's weights multiply, per example: ``(b, P_out, fan_in)``.

    Dense: the input itself at each position (a view). Conv: patches of the padded input.
    """

    def __init__(self, node: Node, h: np.ndarray) -> None:
        self.node = node
        self.conv = node.kind == "conv"
        self.h = _pad(h, node) if self.conv else h.reshape(h.shape[0], node.shape_in.positions, -1)

    def rows(self, sl: slice) -> np.ndarray:
        return patches(self.node, self.h[sl]) if self.conv else self.h[sl]


# --------------------------------------------------------------------------- layer kinds
class FiniteLayer:
    """Base of the finite-width layer kinds (see the module docstring)."""

    def plan(self, layer: Any, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        raise NotImplementedError

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        """``(out, cache)``; ``cache`` is what ``backward`` needs (None unless ``keep``)."""
        raise NotImplementedError

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        """``∂(Σ g·out)/∂h`` (None unless ``need_in``); reports dense/conv signals to ``sink``."""
        raise NotImplementedError

    def cache_entries(self, node: Node) -> int:
        """Entries per example kept between the passes."""
        return 0

    def scratch_entries(self, node: Node) -> int:
        """Entries per example of the temporaries of one pass (besides input and output)."""
        return 0


def _affine_node(kind: str, layer: S.Dense | S.Conv, shape_in: FShape, shape_out: FShape, ctx: PlanContext,
                 where: str, weight_shape: tuple[int, ...], fan_in: int, **geometry: Any) -> Node:
    w_mult, b_mult, has_bias, w_init, b_init, pw, pb = affine_constants(
        ctx.parameterization, layer.w_std, layer.b_std, fan_in)
    affine = Affine(weight_shape, fan_in, shape_out.channels, w_mult, b_mult, has_bias, w_init, b_init, pw, pb)
    node = Node(kind, layer, where, shape_in, shape_out, affine, len(ctx.affine), **geometry)
    ctx.affine.append(node)
    return node


def _scaled(z: np.ndarray, a: Affine, b: np.ndarray | None) -> np.ndarray:
    if a.w_mult != 1.0:
        z *= z.dtype.type(a.w_mult)
    if b is not None:
        z += z.dtype.type(a.b_mult) * b
    return z


class DenseLayer(FiniteLayer):
    def plan(self, layer: S.Dense, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        out = FShape(shape.spatial, 1 if readout else ctx.width)
        return _affine_node("dense", layer, shape, out, ctx, where, (out.channels, shape.channels), shape.channels)

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        z = h @ params.weights[node.index].T
        return _scaled(z, node.affine, params.biases[node.index]), (h if keep else None)

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        sink.affine(node, params, cache, g)
        if not need_in:
            return None
        gin = g @ params.weights[node.index]
        if node.affine.w_mult != 1.0:
            gin *= gin.dtype.type(node.affine.w_mult)
        return gin

    def cache_entries(self, node: Node) -> int:
        return node.shape_in.size


def _spatial_plan(layer: Any, shape: FShape, window: tuple[int, ...], strides: tuple[int, ...] | None,
                  default: tuple[int, ...], where: str, what: str) -> dict[str, Any]:
    """Window, strides and per-axis ``(out, pad_lo, pad_hi)``; ValueError naming the layer if it does not fit."""
    if not shape.spatial:
        raise ValueError(f"{where}: {what} needs inputs with spatial axes (n × L × C or n × H × W × C), but this "
                         "representation has none (n × d input, or after flatten/global pooling)")
    strides = tuple(default if strides is None else strides)
    if len(window) != len(shape.spatial) or len(strides) != len(shape.spatial):
        raise ValueError(f"{where}: {len(window)} window entries and {len(strides)} strides for "
                         f"{len(shape.spatial)} spatial axes (shape {list(shape.spatial)})")
    try:
        geometry = tuple(window_geometry(size, f, s, layer.padding)
                         for size, f, s in zip(shape.spatial, window, strides))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc} (spatial shape {list(shape.spatial)})") from None
    return {"window": tuple(window), "strides": strides, "padding": layer.padding, "geometry": geometry}


class ConvLayer(FiniteLayer):
    def plan(self, layer: S.Conv, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        geo = _spatial_plan(layer, shape, layer.filter_shape, layer.strides, (1,) * len(layer.filter_shape), where,
                            "conv")
        out = FShape(tuple(g[0] for g in geo["geometry"]), ctx.width)
        fan_in = shape.channels * math.prod(layer.filter_shape)
        return _affine_node("conv", layer, shape, out, ctx, where,
                            (out.channels, *layer.filter_shape, shape.channels), fan_in, **geo)

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        a = node.affine
        w = params.weights[node.index].reshape(a.fan_out, a.fan_in)
        hpad = _pad(h, node)
        n = h.shape[0]
        z = np.empty((n, node.shape_out.positions, a.fan_out), dtype=h.dtype)
        step = example_chunk(node)
        for i in range(0, n, step):
            np.matmul(patches(node, hpad[i : i + step]), w.T, out=z[i : i + step])
        z = _scaled(z, a, params.biases[node.index])
        return z.reshape(node.shape_out.array(n)), (h if keep else None)

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        sink.affine(node, params, cache, g)
        if not need_in:
            return None
        a = node.affine
        w = params.weights[node.index].reshape(a.fan_out, a.fan_in)
        n = g.shape[0]
        pad_shape = (n, *(size + lo + hi for size, (_, lo, hi) in zip(node.shape_in.spatial, node.geometry)),
                     node.shape_in.channels)
        gpad = np.zeros(pad_shape, dtype=g.dtype)
        flat = g.reshape(n, node.shape_out.positions, a.fan_out)
        step = example_chunk(node)
        cin = node.shape_in.channels
        for i in range(0, n, step):
            gp = flat[i : i + step] @ w  # (b, P_out, filter·C_in)
            gp = gp.reshape(gp.shape[0], *node.shape_out.spatial, -1, cin)
            block = gpad[i : i + step]
            for f, off in enumerate(_offsets(node)):
                _window(block, node, off)[...] += gp[..., f, :]
        gin = _unpad(gpad, node)
        if a.w_mult != 1.0:
            gin *= gin.dtype.type(a.w_mult)
        return gin

    def cache_entries(self, node: Node) -> int:
        return node.shape_in.size

    def scratch_entries(self, node: Node) -> int:
        padded = math.prod(s + lo + hi for s, (_, lo, hi) in zip(node.shape_in.spatial, node.geometry))
        return padded * node.shape_in.channels


class PoolLayer(FiniteLayer):
    """``avg_pool`` (``average``) and ``sum_pool``."""

    def __init__(self, average: bool) -> None:
        self.average = average

    def plan(self, layer: S.AvgPool | S.SumPool, shape: FShape, ctx: PlanContext, where: str,
             readout: bool) -> Node:
        geo = _spatial_plan(layer, shape, layer.window_shape, layer.strides, layer.window_shape, where,
                            "avg_pool" if self.average else "sum_pool")
        out = FShape(tuple(g[0] for g in geo["geometry"]), shape.channels)
        return Node("avg_pool" if self.average else "sum_pool", layer, where, shape, out, **geo)

    def _scale(self, node: Node) -> float:
        return 1.0 / math.prod(node.window) if self.average else 1.0

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        hpad = _pad(h, node)
        out = np.zeros(node.shape_out.array(h.shape[0]), dtype=h.dtype)
        for off in _offsets(node):
            out += _window(hpad, node, off)
        if self.average:
            out *= out.dtype.type(self._scale(node))
        return out, None

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        if not need_in:
            return None
        n = g.shape[0]
        pad_shape = (n, *(size + lo + hi for size, (_, lo, hi) in zip(node.shape_in.spatial, node.geometry)),
                     node.shape_in.channels)
        gpad = np.zeros(pad_shape, dtype=g.dtype)
        for off in _offsets(node):
            _window(gpad, node, off)[...] += g
        gin = _unpad(gpad, node)
        if self.average:
            gin *= gin.dtype.type(self._scale(node))
        return gin

    def scratch_entries(self, node: Node) -> int:
        padded = math.prod(s + lo + hi for s, (_, lo, hi) in zip(node.shape_in.spatial, node.geometry))
        return padded * node.shape_in.channels


class GlobalPoolLayer(FiniteLayer):
    """``global_avg_pool`` (``average``) and ``global_sum_pool``: over all positions (the identity
    without spatial axes)."""

    def __init__(self, average: bool) -> None:
        self.average = average

    def plan(self, layer: Any, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        return Node("global_avg_pool" if self.average else "global_sum_pool", layer, where, shape,
                    FShape((), shape.channels))

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        axes = tuple(range(1, h.ndim - 1))
        return (h.mean(axis=axes) if self.average else h.sum(axis=axes)), None

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        if not need_in:
            return None
        n = g.shape[0]
        if self.average:
            g = g * g.dtype.type(1.0 / node.shape_in.positions)
        ones = (1,) * len(node.shape_in.spatial)
        return np.broadcast_to(g.reshape(n, *ones, -1), node.shape_in.array(n)).copy()


class FlattenLayer(FiniteLayer):
    """Positions and channels into one axis (row-major NHWC order; the identity without spatial axes)."""

    def plan(self, layer: S.Flatten, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        return Node("flatten", layer, where, shape, FShape((), shape.size))

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        return h.reshape(h.shape[0], -1), None

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        return g.reshape(node.shape_in.array(g.shape[0])) if need_in else None


class LayerNormLayer(FiniteLayer):
    def plan(self, layer: S.LayerNorm, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        return Node("layer_norm", layer, where, shape, shape)

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        centred = h - h.mean(axis=-1, keepdims=True)
        var = np.mean(centred * centred, axis=-1, keepdims=True)
        sigma = np.sqrt(var + h.dtype.type(node.layer.eps))
        y = centred / sigma
        return y, ((y, sigma) if keep else None)

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        if not need_in:
            return None
        y, sigma = cache
        gin = g - g.mean(axis=-1, keepdims=True) - y * np.mean(g * y, axis=-1, keepdims=True)
        gin /= sigma
        return gin

    def cache_entries(self, node: Node) -> int:
        return node.shape_in.size + node.shape_in.positions


class ActivationLayer(FiniteLayer):
    """Every activation (closed-form names and ``elementwise``)."""

    def plan(self, layer: S.Activation, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        try:
            check_activation(layer)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return Node(kind_of(layer).type, layer, where, shape, shape)

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        return phi(node.layer, h), (h if keep else None)

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        return g * dphi(node.layer, cache) if need_in else None

    def cache_entries(self, node: Node) -> int:
        return node.shape_in.size


class BranchesLayer(FiniteLayer):
    def plan(self, layer: S.Branches, shape: FShape, ctx: PlanContext, where: str, readout: bool) -> Node:
        planned = []
        outs = []
        for b, branch in enumerate(layer.branches):
            nodes, out = plan_layers(branch, shape, ctx, f"{where}.branches[{b}]")
            planned.append(nodes)
            outs.append(out)
        for b, out in enumerate(outs[1:], 1):
            if out != outs[0]:
                raise ValueError(
                    f"{where}: branch {b} ends with shape {[*out.spatial, out.channels]}, branch 0 with "
                    f"{[*outs[0].spatial, outs[0].channels]} (positions, channels; every hidden dense/conv layer "
                    "has `width` channels in a finite network): branches must agree to be merged")
        return Node("branches", layer, where, shape, outs[0], branches=tuple(planned))

    def forward(self, node: Node, params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, Any]:
        outs, caches = [], []
        for branch in node.branches:
            out, cache = forward_layers(branch, params, h, keep)
            outs.append(out)
            caches.append(cache)
        total = outs[0].copy()
        for out in outs[1:]:
            if node.layer.merge == "sum":
                total += out
            else:
                total *= out
        product = node.layer.merge == "product" and len(outs) > 1
        return total, ((caches, outs if product else None) if keep else None)

    def backward(self, node: Node, params: Any, cache: Any, g: np.ndarray, sink: Sink,
                 need_in: bool) -> np.ndarray | None:
        caches, outs = cache
        gin = None
        for b, branch in enumerate(node.branches):
            gb = g
            if outs is not None:
                gb = g.copy()
                for c, out in enumerate(outs):
                    if c != b:
                        gb *= out
            part = backward_layers(branch, params, caches[b], gb, sink, need_in)
            if part is None:
                continue
            if gin is None:
                gin = part.copy()  # an identity branch returns the (shared) signal itself
            else:
                gin += part
        return gin

    def cache_entries(self, node: Node) -> int:
        product = node.layer.merge == "product" and len(node.branches) > 1
        return len(node.branches) * node.shape_out.size if product else 0


#: The finite-width definition of every registered layer kind (keyed like ``registry.LAYER_KINDS``).
FINITE: dict[str, FiniteLayer] = {
    "dense": DenseLayer(),
    "conv": ConvLayer(),
    "avg_pool": PoolLayer(average=True),
    "sum_pool": PoolLayer(average=False),
    "global_avg_pool": GlobalPoolLayer(average=True),
    "global_sum_pool": GlobalPoolLayer(average=False),
    "flatten": FlattenLayer(),
    "layer_norm": LayerNormLayer(),
    "branches": BranchesLayer(),
    **{name: ActivationLayer() for name in (*S.CLOSED_FORM_ACTIVATIONS, "elementwise")},
}


# --------------------------------------------------------------------------- sequences
def plan_layers(layers: tuple[Any, ...], shape: FShape, ctx: PlanContext, where: str,
                readout_last: bool = False) -> tuple[tuple[Node, ...], FShape]:
    """Plan ``layers`` from ``shape``; with ``readout_last`` the last one is the (1-output) readout."""
    nodes = []
    for i, layer in enumerate(layers):
        node = FINITE[kind_of(layer).type].plan(layer, shape, ctx, f"{where}[{i}]",
                                                readout_last and i == len(layers) - 1)
        nodes.append(node)
        shape = node.shape_out
    return tuple(nodes), shape


def forward_layers(nodes: tuple[Node, ...], params: Any, h: np.ndarray, keep: bool) -> tuple[np.ndarray, list]:
    """Run ``nodes`` on ``h``; with ``keep`` also return each node's cache for the backward pass."""
    caches = []
    for node in nodes:
        h, cache = FINITE[node.kind].forward(node, params, h, keep)
        caches.append(cache)
    return h, caches


def backward_layers(nodes: tuple[Node, ...], params: Any, caches: list, g: np.ndarray, sink: Sink,
                    need_in: bool) -> np.ndarray | None:
    """The backward pass of ``nodes`` from the output signal ``g``; the input signal if ``need_in``."""
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        g = FINITE[node.kind].backward(node, params, caches[i], g, sink, need_in or i > 0)
        caches[i] = None  # free as we go
    return g if nodes else (g if need_in else None)


def walk(nodes: tuple[Node, ...]) -> Iterator[Node]:
    """Every node, depth first (branch contents before the branches node itself)."""
    for node in nodes:
        for branch in node.branches:
            yield from walk(branch)
        yield node
