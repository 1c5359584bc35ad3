"""Finite-width networks: architecture, parameters drawn from a seed, forward pass, VJP.

Conventions (scalar output; inputs ``x`` of shape ``(n, d)``, ``(n, L, C)`` or ``(n, H, W, C)``,
NHWC; hidden width ``m``):

- ``Network``: every ``Dense``/``Conv`` has ``m`` output channels (the spec's own ``width``
  fields are ignored: the request's width wins) except the last top-level ``Dense``, the
  readout, which has one output and must be the last layer. Every layer kind is defined in
  :mod:`core.empirical.layers` (``FINITE``): dense acts on the channel axis at every position,
  activations act elementwise on whatever precedes them (also on the input). A network that
  does not fit its input (a conv on ``n × d`` rows, a VALID window larger than its input,
  branches that end in different shapes, spatial axes left before the readout) is a
  ``ValueError`` naming the layer. Finite networks are well defined whatever the Gaussianity of
  a layer's input, so the refusals of the infinite-width rules (``core.kernels.shapes.trace``)
  are not applied here.
- NTK parameterization: ``h' = (w_std/√fan_in)·W h + b_std·b`` with ``W, b ~ N(0, 1)``.
- Standard parameterization: ``h' = W h + b`` with ``W ~ N(0, w_std²/fan_in)``,
  ``b ~ N(0, b_std²)`` (a bias with ``b_std = 0`` exists and is trained).
- ``fan_in`` = input channels for dense, input channels × filter size for conv.
- ``b_std = None``: the layer has no bias parameter at all (either parameterization).
- ``TwoLayerRelu``: ``f(x) = m^{-1/2} Σ_i b_i relu(a_iᵀx)``, ``a_i ~ N(0, I_d)``,
  ``b_i ~ N(0, 1)``, no biases, no 1/d (stored as weights ``a`` (m×d) and ``b`` (1×m)).
- Parameters are drawn from ``np.random.default_rng(seed)`` in float64, layer by layer in the
  order of the spec (depth first through branches; weight then bias), then cast to the requested
  dtype: they depend on ``(spec, input shape, width, seed)`` only, and a float32 network is the
  float64 one rounded.
- Dense weights are stored ``(fan_out, fan_in)``, conv weights ``(fan_out, *filter_shape, C_in)``;
  ``θ`` is the stored arrays (what gradient descent trains), so ``∇θ f`` includes the forward
  multipliers ``w_mult``/``b_mult``. Derivatives at kinks are strict (``relu'(0) = 0``).

Networks with exactly two dense layers (one hidden width) on ``n × d`` inputs are evaluated in
chunks of hidden units, so memory stays ``O(n·chunk)`` besides the parameters even at width
2^18. Other networks hold their parameters and every layer's activations for the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from core.empirical.activations import apply_chain
from core.empirical.layers import (
    Affine,
    Features,
    FShape,
    Node,
    PlanContext,
    backward_layers,
    example_chunk,
    forward_layers,
    plan_layers,
)
from core.kernels.spec import (
    Activation,
    Branches,
    Dense,
    Network,
    TwoLayerRelu,
    validate_spec,
)

EmpiricalSpec = Network | TwoLayerRelu

#: Target number of entries in one ``(n, chunk)`` block of the chunked two-layer path.
CHUNK_ENTRIES = 2**21
#: float64 numbers drawn at a time when initialising parameters.
DRAW_BLOCK = 2**20
_RELU = Activation("relu")


@dataclass(frozen=True, slots=True)
class DenseStage:
    """One dense layer with the activations that precede it (the two-layer fast path).

    ``acts`` act on the previous stage's output (the input for the first stage); ``affine``
    holds the multipliers: ``z = w_mult · u Wᵀ + b_mult · b``.
    """

    acts: tuple[Activation, ...]
    affine: Affine


@dataclass(frozen=True, slots=True, eq=False)
class Architecture:
    """A finite network planned for inputs with rows of ``feature_shape`` at hidden width ``width``.

    ``nodes``: the top-level planned layers (the last one is the readout); ``affine``: every
    dense/conv node in parameter order; ``stages``: the two dense stages when the chunked
    two-layer path applies, else None.
    """

    nodes: tuple[Node, ...]
    affine: tuple[Node, ...]
    feature_shape: tuple[int, ...]
    width: int
    stages: tuple[DenseStage, ...] | None

    @property
    def readout(self) -> Node:
        return self.nodes[-1]


@dataclass(frozen=True, slots=True, eq=False)
class Params:
    """Parameters θ: per dense/conv layer (in parameter order) a weight and a bias or None."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray | None, ...]
    feature_shape: tuple[int, ...]
    width: int

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    @property
    def d(self) -> int:
        """Input entries per example."""
        return math.prod(self.feature_shape)

    def arrays(self) -> list[np.ndarray]:
        """The parameter arrays in the canonical order (per layer: weight, then bias if any)."""
        out: list[np.ndarray] = []
        for w, b in zip(self.weights, self.biases):
            out.append(w)
            if b is not None:
                out.append(b)
        return out

    def map(self, fn: Callable[[np.ndarray], np.ndarray]) -> Params:
        """A new ``Params`` with ``fn`` applied to every array (None biases stay None)."""
        return Params(
            tuple(fn(w) for w in self.weights),
            tuple(None if b is None else fn(b) for b in self.biases),
            self.feature_shape,
            self.width,
        )


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def feature_shape_of(d: int | Sequence[int]) -> tuple[int, ...]:
    """``d`` (an int, or a row shape ``(d,)``, ``(L, C)``, ``(H, W, C)``) as a row shape."""
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
        return (_check_positive_int(d, "d"),)
    dims = tuple(d)
    if not 1 <= len(dims) <= 3:
        raise ValueError(f"input rows must have shape (d,), (L, C) or (H, W, C), got {list(dims)}")
    return tuple(_check_positive_int(v, "input dimension") for v in dims)


def _has_dense(layers: tuple) -> bool:
    return any(isinstance(layer, Dense) or (isinstance(layer, Branches) and any(_has_dense(b) for b in layer.branches))
               for layer in layers)


def _two_layer_relu(d: int, width: int) -> Architecture:
    first = Affine((width, d), d, width, 1.0, 0.0, False, 1.0, 0.0, 1.0, 0.0)
    second = Affine((1, width), width, 1, 1.0 / math.sqrt(width), 0.0, False, 1.0, 0.0, 1.0 / width, 0.0)
    dense, relu = Dense(1.0), _RELU
    nodes = (
        Node("dense", dense, "a", FShape((), d), FShape((), width), first, 0),
        Node("relu", relu, "relu", FShape((), width), FShape((), width)),
        Node("dense", dense, "b", FShape((), width), FShape((), 1), second, 1),
    )
    stages = (DenseStage((), first), DenseStage((_RELU,), second))
    return Architecture(nodes, (nodes[0], nodes[2]), (d,), width, stages)


def _stages(layers: tuple, affine: tuple[Node, ...], feature_shape: tuple[int, ...]) -> tuple[DenseStage, ...] | None:
    """The chunked path's stages: two dense layers and activations only, ``n × d`` inputs."""
    if len(feature_shape) != 1 or len(affine) != 2 or not all(isinstance(x, (Dense, Activation)) for x in layers):
        return None
    cut = next(i for i, layer in enumerate(layers) if isinstance(layer, Dense))
    return (DenseStage(tuple(layers[:cut]), affine[0].affine),
            DenseStage(tuple(layers[cut + 1 : -1]), affine[1].affine))


def architecture(spec: EmpiricalSpec, d: int | Sequence[int], width: int) -> Architecture:
    """Validate ``spec`` and plan it for input rows of shape ``d`` (an int: ``(d,)``) at ``width``."""
    shape = feature_shape_of(d)
    width = _check_positive_int(width, "width")
    if isinstance(spec, TwoLayerRelu):
        if len(shape) != 1:
            raise ValueError(f"two_layer_relu takes n × d inputs, got rows of shape {list(shape)}")
        return _two_layer_relu(shape[0], width)
    if not isinstance(spec, Network):  # a ValueError throughout: the service maps it to 422
        raise ValueError(  # noqa: TRY004
            f"empirical kernels need a Network or TwoLayerRelu spec, got {type(spec).__name__}"
        )
    if spec.parameterization not in ("ntk", "standard"):
        raise ValueError(
            f"unknown parameterization {spec.parameterization!r}; expected 'ntk' or 'standard'"
        )
    layers = tuple(spec.layers)
    if not _has_dense(layers):
        raise ValueError("a network needs at least one dense layer (the readout, last)")
    if not isinstance(layers[-1], Dense):
        raise ValueError("the last layer of a network must be a dense (readout) layer: a finite network "  # noqa: TRY004
                         "ends with a dense layer of one output")
    validate_spec(spec)
    ctx = PlanContext(spec.parameterization, width)
    nodes, _ = plan_layers(layers, FShape(shape[:-1], shape[-1]), ctx, "layers", readout_last=True)
    if nodes[-1].shape_in.spatial:
        raise ValueError(f"the network ends with spatial axes {list(nodes[-1].shape_in.spatial)}: reduce them with "
                         "flatten or a global pool before the dense readout")
    affine = tuple(ctx.affine)
    return Architecture(nodes, affine, shape, width, _stages(layers, affine, shape))


def parameter_count(spec: EmpiricalSpec, d: int | Sequence[int], width: int) -> int:
    """Number of trainable scalars of ``spec`` for input rows of shape ``d`` at width ``width``."""
    return sum(
        math.prod(node.affine.weight_shape) + (node.affine.fan_out if node.affine.has_bias else 0)
        for node in architecture(spec, d, width).affine
    )


def init_params(
    spec: EmpiricalSpec,
    d: int | Sequence[int],
    width: int,
    seed: int,
    dtype: np.typing.DTypeLike = np.float64,
) -> Params:
    """Draw θ₀ of ``spec`` from ``np.random.default_rng(seed)`` (see the module docstring)."""
    arch = architecture(spec, d, width)
    dtype = _float_dtype(dtype)
    rng = np.random.default_rng(seed)
    weights: list[np.ndarray] = []
    biases: list[np.ndarray | None] = []
    for node in arch.affine:
        a = node.affine
        weights.append(_draw(rng, a.weight_shape, a.w_init, dtype))
        biases.append(_draw(rng, (a.fan_out,), a.b_init, dtype) if a.has_bias else None)
    return Params(tuple(weights), tuple(biases), arch.feature_shape, arch.width)


def _draw(
    rng: np.random.Generator, shape: tuple[int, ...], std: float, dtype: np.dtype
) -> np.ndarray:
    """``std · N(0, 1)`` of ``shape``: the same numbers as ``rng.standard_normal(shape)`` (float64),
    drawn in row blocks so a float32 result never holds a full float64 copy."""
    out = np.empty(shape, dtype=dtype)
    flat = out.reshape(-1)
    block = max(1, DRAW_BLOCK)
    buf = np.empty(min(block, flat.size))
    for i in range(0, flat.size, block):
        chunk = buf[: min(block, flat.size - i)]
        rng.standard_normal(out=chunk)
        if std != 1.0:
            chunk *= std
        flat[i : i + chunk.size] = chunk
    return out


def _float_dtype(dtype: np.typing.DTypeLike) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def input_ranks(spec: EmpiricalSpec) -> tuple[int, ...]:
    """Array ranks ``spec`` takes: networks ``n × d``, ``n × L × C``, ``n × H × W × C``; two_layer_relu ``n × d``."""
    return (2, 3, 4) if isinstance(spec, Network) else (2,)


def as_inputs(
    x: np.typing.ArrayLike,
    dtype: np.dtype,
    d: int | Sequence[int] | None = None,
    name: str = "x",
    ranks: tuple[int, ...] = (2,),
) -> np.ndarray:
    """``x`` as a C-contiguous array of ``dtype`` with a rank in ``ranks`` and rows of shape ``d``
    (when given); ValueError on a bad shape or non-finite values."""
    arr = np.ascontiguousarray(x, dtype=dtype)
    if arr.ndim not in ranks or 0 in arr.shape:
        forms = {2: "2-D (n, d)", 3: "3-D (n, L, C)", 4: "4-D (n, H, W, C)"}
        allowed = " or ".join(forms[r] for r in ranks)
        raise ValueError(f"{name} must be a non-empty {allowed} array, got shape {arr.shape}")
    if d is not None:
        want = feature_shape_of(d)
        if arr.shape[1:] != want:
            if arr.ndim == 2 and len(want) == 1:
                raise ValueError(f"{name} has {arr.shape[1]} features, expected {want[0]}")
            raise ValueError(f"{name} rows have shape {list(arr.shape[1:])}, expected {list(want)} "
                             "(the features of the other inputs)")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _checked(
    spec: EmpiricalSpec, params: Params, x: np.typing.ArrayLike
) -> tuple[Architecture, np.ndarray]:
    arch = architecture(spec, params.feature_shape, params.width)
    if len(params.weights) != len(arch.affine):
        raise ValueError("params do not match the spec")
    for node, w, b in zip(arch.affine, params.weights, params.biases, strict=True):
        if w.shape != node.affine.weight_shape or (b is None) == node.affine.has_bias:
            raise ValueError("params do not match the spec")
    return arch, as_inputs(x, params.dtype, params.feature_shape, ranks=input_ranks(spec))


def chunk_units(n_rows: int, width: int) -> int:
    """Hidden units per block in the chunked two-layer path for ``n_rows`` stacked examples."""
    return int(min(width, max(64, CHUNK_ENTRIES // max(n_rows, 1))))


def _dense(
    a: Affine, u: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> np.ndarray:
    z = u @ w.T
    if a.w_mult != 1.0:
        z *= z.dtype.type(a.w_mult)
    if b is not None:
        z += z.dtype.type(a.b_mult) * b
    return z


def two_layer_blocks(
    arch: Architecture,
    params: Params,
    u0: np.ndarray,
    *,
    delta: bool,
    chunk: int | None = None,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray | None]]:
    """For a two-stage network, yield per block of hidden units ``(units, U1, Δ1)``.

    ``u0`` is the first stage's input (activations already applied). ``U1`` (n×c) is the
    readout's input on those units and ``Δ1 = ∂f/∂z1`` (n×c) the backward signal at the
    hidden pre-activations, or None when ``delta`` is False.
    """
    s1, s2 = arch.stages
    w1, b1 = params.weights[0], params.biases[0]
    v = params.weights[1][0]
    c = chunk or chunk_units(u0.shape[0], arch.width)
    for j0 in range(0, arch.width, c):
        units = slice(j0, min(j0 + c, arch.width))
        z = _dense(s1.affine, u0, w1[units], None if b1 is None else b1[units])
        u1, du = apply_chain(s2.acts, z, derivative=delta)
        if du is not None:
            du *= v[units] * z.dtype.type(s2.affine.w_mult)
        yield units, u1, du


class GradientSink:
    """Collects ``Σ_i r_i ∇θ f(x_i)`` per dense/conv layer during a backward pass from ``r``."""

    def __init__(self, count: int) -> None:
        self.weights: list[np.ndarray | None] = [None] * count
        self.biases: list[np.ndarray | None] = [None] * count

    def affine(self, node: Node, params: Params, h: np.ndarray, delta: np.ndarray) -> None:
        a = node.affine
        n = h.shape[0]
        d = delta.reshape(n, node.shape_out.positions, a.fan_out)
        feats = Features(node, h)
        step = example_chunk(node) if node.kind == "conv" else n
        gw = np.zeros((a.fan_out, a.fan_in), dtype=delta.dtype)
        for i in range(0, n, step):
            rows = slice(i, i + step)
            gw += d[rows].reshape(-1, a.fan_out).T @ feats.rows(rows).reshape(-1, a.fan_in)
        gw *= gw.dtype.type(a.w_mult)
        self.weights[node.index] = gw.reshape(a.weight_shape)
        if a.has_bias:
            self.biases[node.index] = d.sum(axis=(0, 1)) * delta.dtype.type(a.b_mult)


def apply(spec: EmpiricalSpec, params: Params, x: np.typing.ArrayLike) -> np.ndarray:
    """Network outputs ``f(x)`` of shape ``(n,)`` in the parameters' dtype."""
    arch, x = _checked(spec, params, x)
    if arch.stages is not None:
        s2, b2 = arch.stages[1], params.biases[1]
        u0, _ = apply_chain(arch.stages[0].acts, x)
        out = np.zeros(x.shape[0], dtype=params.dtype)
        v = params.weights[1][0]
        for units, u1, _ in two_layer_blocks(arch, params, u0, delta=False):
            out += u1 @ v[units]
        out *= params.dtype.type(s2.affine.w_mult)
        if b2 is not None:
            out += params.dtype.type(s2.affine.b_mult) * b2[0]
        return out
    return forward_layers(arch.nodes, params, x, keep=False)[0][:, 0]


def gradients(
    spec: EmpiricalSpec,
    params: Params,
    x: np.typing.ArrayLike,
    residual: np.typing.ArrayLike,
) -> Params:
    """Vector–Jacobian product ``Σ_i r_i ∇θ f(x_i)``, shaped like ``params``.

    With ``r = f(x) − y`` this is the gradient of ``½ Σ (f − y)²`` (divide by N for the mean loss).
    """
    arch, x = _checked(spec, params, x)
    r = np.asarray(residual, dtype=params.dtype).reshape(-1)
    if r.shape[0] != x.shape[0]:
        raise ValueError(f"residual has {r.shape[0]} entries, x has {x.shape[0]} rows")
    dt = params.dtype.type
    if arch.stages is not None:
        s1, s2 = arch.stages
        u0, _ = apply_chain(s1.acts, x)
        gw1 = np.empty_like(params.weights[0])
        gb1 = None if params.biases[0] is None else np.empty_like(params.biases[0])
        gw2 = np.empty_like(params.weights[1])
        for units, u1, delta in two_layer_blocks(arch, params, u0, delta=True):
            gw2[0, units] = r @ u1
            rd = delta * r[:, None]
            gw1[units] = rd.T @ u0
            if gb1 is not None:
                gb1[units] = rd.sum(axis=0)
        gw1 *= dt(s1.affine.w_mult)
        gw2 *= dt(s2.affine.w_mult)
        if gb1 is not None:
            gb1 *= dt(s1.affine.b_mult)
        gb2 = (
            None
            if params.biases[1] is None
            else np.full(1, s2.affine.b_mult * r.sum(), dtype=params.dtype)
        )
        return Params((gw1, gw2), (gb1, gb2), params.feature_shape, params.width)
    _, caches = forward_layers(arch.nodes, params, x, keep=True)
    sink = GradientSink(len(arch.affine))
    backward_layers(arch.nodes, params, caches, r[:, None].copy(), sink, need_in=False)
    return Params(tuple(sink.weights), tuple(sink.biases), params.feature_shape, params.width)


def flatten(params: Params) -> np.ndarray:
    """θ as one vector (per stage: weight row-major, then bias)."""
    return np.concatenate([a.reshape(-1) for a in params.arrays()])


def unflatten(like: Params, vector: np.typing.ArrayLike) -> Params:
    """Inverse of :func:`flatten`, with the shapes (and dtype) of ``like``."""
    vec = np.asarray(vector, dtype=like.dtype).reshape(-1)
    total = sum(a.size for a in like.arrays())
    if vec.size != total:
        raise ValueError(f"vector has {vec.size} entries, params have {total}")
    offset = 0

    def take(a: np.ndarray) -> np.ndarray:
        nonlocal offset
        out = vec[offset : offset + a.size].reshape(a.shape).copy()
        offset += a.size
        return out

    weights, biases = [], []
    for w, b in zip(like.weights, like.biases):
        weights.append(take(w))
        biases.append(None if b is None else take(b))
    return Params(tuple(weights), tuple(biases), like.feature_shape, like.width)


def params_norm(params: Params) -> float:
    """Euclidean norm ‖θ‖ over all parameters (accumulated in float64)."""
    total = 0.0
    for a in params.arrays():
        v = a.reshape(-1).astype(np.float64, copy=False)
        total += float(v @ v)
    return math.sqrt(total)


def params_distance(a: Params, b: Params) -> float:
    """‖θ_a − θ_b‖ (same shapes)."""
    return math.sqrt(
        sum(
            float(np.sum((x.astype(np.float64) - y) ** 2))
            for x, y in zip(a.arrays(), b.arrays(), strict=True)
        )
    )


def add_scaled(params: Params, direction: Params, alpha: float) -> Params:
    """``θ + α·direction`` (e.g. a gradient step with ``α = −η/N``)."""
    dt = params.dtype.type
    return Params(
        tuple(
            w + dt(alpha) * g
            for w, g in zip(params.weights, direction.weights, strict=True)
        ),
        tuple(
            None if b is None else b + dt(alpha) * g
            for b, g in zip(params.biases, direction.biases, strict=True)
        ),
        params.feature_shape,
        params.width,
    )
