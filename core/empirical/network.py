"""Finite-width networks: architecture, parameters drawn from a seed, forward pass, VJP.

Conventions (scalar output, inputs ``x`` of shape ``(n, d)``, hidden width ``m``):

- ``Network``: every ``Dense`` but the last has output width ``m`` (the spec's own ``width``
  fields are ignored: the request's width wins); the last ``Dense`` has output width 1 and must
  be the last layer. Activations act elementwise on whatever precedes them (also on the input,
  when they come before the first ``Dense``).
- NTK parameterization: ``h' = (w_std/√fan_in)·W h + b_std·b`` with ``W, b ~ N(0, 1)``.
- Standard parameterization: ``h' = W h + b`` with ``W ~ N(0, w_std²/fan_in)``,
  ``b ~ N(0, b_std²)`` (a bias with ``b_std = 0`` exists and is trained).
- ``b_std = None``: the layer has no bias parameter at all (either parameterization).
- ``TwoLayerRelu``: ``f(x) = m^{-1/2} Σ_i b_i relu(a_iᵀx)``, ``a_i ~ N(0, I_d)``,
  ``b_i ~ N(0, 1)``, no biases, no 1/d (stored as weights ``a`` (m×d) and ``b`` (1×m)).
- Parameters are drawn from ``np.random.default_rng(seed)`` in float64, layer by layer
  (weight then bias), then cast to the requested dtype: they depend on ``(spec, d, width,
  seed)`` only, and a float32 network is the float64 one rounded.
- Weights are stored ``(fan_out, fan_in)``; ``θ`` is the stored arrays (what gradient descent
  trains), so ``∇θ f`` includes the forward multipliers ``w_mult``/``b_mult``.

Networks with exactly two dense layers (one hidden width) are evaluated in chunks of hidden
units, so memory stays ``O(n·chunk)`` besides the parameters even at width 2^18. Deeper
networks hold ``m×m`` weights and ``n×m`` activations per layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from core.empirical.activations import apply_chain, check_activation
from core.kernels.spec import Activation, Dense, Network, TwoLayerRelu

EmpiricalSpec = Network | TwoLayerRelu

#: Target number of entries in one ``(n, chunk)`` block of the chunked two-layer path.
CHUNK_ENTRIES = 2**21
#: float64 numbers drawn at a time when initialising parameters.
DRAW_BLOCK = 2**20
_RELU = Activation("relu")


@dataclass(frozen=True, slots=True)
class DenseStage:
    """One dense layer with the activations that precede it.

    ``acts`` act on the previous stage's output (the input for the first stage). The forward
    map is ``z = w_mult · u Wᵀ + b_mult · b`` with the stored ``W ~ N(0, w_init²)``,
    ``b ~ N(0, b_init²)``. ``prior_w_var = w_std²/fan_in`` and ``prior_b_var = b_std²`` (0 without
    a bias) are the variances of the effective weights/bias, used for the empirical NNGP.
    """

    acts: tuple[Activation, ...]
    fan_in: int
    fan_out: int
    w_mult: float
    b_mult: float
    has_bias: bool
    w_init: float
    b_init: float
    prior_w_var: float
    prior_b_var: float


@dataclass(frozen=True, slots=True)
class Architecture:
    """The dense stages of a finite network with input dimension ``d`` and hidden width ``width``."""

    stages: tuple[DenseStage, ...]
    d: int
    width: int


@dataclass(frozen=True, slots=True, eq=False)
class Params:
    """Parameters θ: per dense stage a weight ``(fan_out, fan_in)`` and a bias or None."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray | None, ...]
    d: int
    width: int

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype

    def arrays(self) -> list[np.ndarray]:
        """The parameter arrays in the canonical order (per stage: weight, then bias if any)."""
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
            self.d,
            self.width,
        )


def _check_positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def architecture(spec: EmpiricalSpec, d: int, width: int) -> Architecture:
    """Validate ``spec`` and lay out its dense stages for input dimension ``d`` and width ``width``."""
    d = _check_positive_int(d, "d")
    width = _check_positive_int(width, "width")
    if isinstance(spec, TwoLayerRelu):
        first = DenseStage((), d, width, 1.0, 0.0, False, 1.0, 0.0, 1.0, 0.0)
        second = DenseStage(
            (_RELU,),
            width,
            1,
            1.0 / math.sqrt(width),
            0.0,
            False,
            1.0,
            0.0,
            1.0 / width,
            0.0,
        )
        return Architecture((first, second), d, width)
    if not isinstance(
        spec, Network
    ):  # a ValueError throughout: the service maps it to 422
        raise ValueError(  # noqa: TRY004
            f"empirical kernels need a Network or TwoLayerRelu spec, got {type(spec).__name__}"
        )
    if spec.parameterization not in ("ntk", "standard"):
        raise ValueError(
            f"unknown parameterization {spec.parameterization!r}; expected 'ntk' or 'standard'"
        )
    layers = tuple(spec.layers)
    if not any(isinstance(layer, Dense) for layer in layers):
        raise ValueError("a network needs at least one dense layer")
    if not isinstance(layers[-1], Dense):
        raise ValueError("the last layer of a network must be a dense (readout) layer")  # noqa: TRY004
    n_dense = sum(isinstance(layer, Dense) for layer in layers)
    stages: list[DenseStage] = []
    acts: list[Activation] = []
    fan_in = d
    for layer in layers:
        if isinstance(layer, Activation):
            check_activation(layer)
            acts.append(layer)
            continue
        if not isinstance(layer, Dense):
            raise ValueError(f"unknown layer {layer!r}")  # noqa: TRY004
        if not (math.isfinite(layer.w_std) and layer.w_std > 0):
            raise ValueError(f"w_std must be finite and > 0, got {layer.w_std!r}")
        if layer.b_std is not None and not (
            math.isfinite(layer.b_std) and layer.b_std >= 0
        ):
            raise ValueError(
                f"b_std must be finite and >= 0 or None, got {layer.b_std!r}"
            )
        fan_out = 1 if len(stages) == n_dense - 1 else width
        has_bias = layer.b_std is not None
        b_std = float(layer.b_std) if has_bias else 0.0
        w_std = float(layer.w_std)
        if spec.parameterization == "ntk":
            w_mult, b_mult, w_init, b_init = w_std / math.sqrt(fan_in), b_std, 1.0, 1.0
        else:
            w_mult, b_mult, w_init, b_init = 1.0, 1.0, w_std / math.sqrt(fan_in), b_std
        if not has_bias:
            b_mult = b_init = 0.0
        stages.append(
            DenseStage(
                tuple(acts),
                fan_in,
                fan_out,
                w_mult,
                b_mult,
                has_bias,
                w_init,
                b_init,
                w_std**2 / fan_in,
                b_std**2,
            )
        )
        acts = []
        fan_in = fan_out
    return Architecture(tuple(stages), d, width)


def parameter_count(spec: EmpiricalSpec, d: int, width: int) -> int:
    """Number of trainable scalars of ``spec`` at input dimension ``d`` and width ``width``."""
    return sum(
        s.fan_in * s.fan_out + (s.fan_out if s.has_bias else 0)
        for s in architecture(spec, d, width).stages
    )


def init_params(
    spec: EmpiricalSpec,
    d: int,
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
    for s in arch.stages:
        weights.append(_draw(rng, (s.fan_out, s.fan_in), s.w_init, dtype))
        biases.append(_draw(rng, (s.fan_out,), s.b_init, dtype) if s.has_bias else None)
    return Params(tuple(weights), tuple(biases), arch.d, arch.width)


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


def as_inputs(
    x: np.typing.ArrayLike, dtype: np.dtype, d: int | None = None, name: str = "x"
) -> np.ndarray:
    """``x`` as a C-contiguous ``(n, d)`` array of ``dtype``; ValueError on bad shape or non-finite values."""
    arr = np.ascontiguousarray(x, dtype=dtype)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (n, d), got shape {arr.shape}"
        )
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has {arr.shape[1]} features, expected {d}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _checked(
    spec: EmpiricalSpec, params: Params, x: np.typing.ArrayLike
) -> tuple[Architecture, np.ndarray]:
    arch = architecture(spec, params.d, params.width)
    for s, w, b in zip(arch.stages, params.weights, params.biases, strict=True):
        if w.shape != (s.fan_out, s.fan_in) or (b is None) == s.has_bias:
            raise ValueError("params do not match the spec")
    return arch, as_inputs(x, params.dtype, params.d)


def chunk_units(n_rows: int, width: int) -> int:
    """Hidden units per block in the chunked two-layer path for ``n_rows`` stacked examples."""
    return int(min(width, max(64, CHUNK_ENTRIES // max(n_rows, 1))))


def _dense(
    stage: DenseStage, u: np.ndarray, w: np.ndarray, b: np.ndarray | None
) -> np.ndarray:
    z = u @ w.T
    if stage.w_mult != 1.0:
        z *= z.dtype.type(stage.w_mult)
    if b is not None:
        z += z.dtype.type(stage.b_mult) * b
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
        z = _dense(s1, u0, w1[units], None if b1 is None else b1[units])
        u1, du = apply_chain(s2.acts, z, derivative=delta)
        if du is not None:
            du *= v[units] * z.dtype.type(s2.w_mult)
        yield units, u1, du


def forward(
    arch: Architecture, params: Params, x: np.ndarray, *, derivative: bool
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Full (unchunked) forward pass.

    Returns ``(us, dus, out)``: ``us[l]`` is the input of dense stage ``l`` (after its
    activations), ``dus[l − 1]`` (for stage ``l ≥ 1``, with ``derivative``) the derivative of its
    activation chain at the previous stage's output, and ``out`` the ``(n,)`` network output.
    """
    us: list[np.ndarray] = []
    dus: list[np.ndarray] = []
    h = x
    for l, (s, w, b) in enumerate(zip(arch.stages, params.weights, params.biases)):
        u, du = apply_chain(s.acts, h, derivative=derivative and l > 0)
        us.append(u)
        if du is not None:
            dus.append(du)
        h = _dense(s, u, w, b)
    return us, dus, h[:, 0]


def backward(
    arch: Architecture, params: Params, dus: list[np.ndarray], n: int
) -> list[np.ndarray]:
    """Backward signals ``Δ_l = ∂f/∂z_l`` (n × fan_out_l) per example for every dense stage."""
    dtype = params.dtype
    deltas = [np.ones((n, 1), dtype=dtype)]
    for l in range(len(arch.stages) - 1, 0, -1):
        s = arch.stages[l]
        g = deltas[0] @ params.weights[l]
        if s.w_mult != 1.0:
            g *= dtype.type(s.w_mult)
        g *= dus[l - 1]
        deltas.insert(0, g)
    return deltas


def apply(spec: EmpiricalSpec, params: Params, x: np.typing.ArrayLike) -> np.ndarray:
    """Network outputs ``f(x)`` of shape ``(n,)`` in the parameters' dtype."""
    arch, x = _checked(spec, params, x)
    if len(arch.stages) == 2:
        s2, b2 = arch.stages[1], params.biases[1]
        u0, _ = apply_chain(arch.stages[0].acts, x)
        out = np.zeros(x.shape[0], dtype=params.dtype)
        v = params.weights[1][0]
        for units, u1, _ in two_layer_blocks(arch, params, u0, delta=False):
            out += u1 @ v[units]
        out *= params.dtype.type(s2.w_mult)
        if b2 is not None:
            out += params.dtype.type(s2.b_mult) * b2[0]
        return out
    return forward(arch, params, x, derivative=False)[2]


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
    if len(arch.stages) == 2:
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
        gw1 *= dt(s1.w_mult)
        gw2 *= dt(s2.w_mult)
        if gb1 is not None:
            gb1 *= dt(s1.b_mult)
        gb2 = (
            None
            if params.biases[1] is None
            else np.full(1, s2.b_mult * r.sum(), dtype=params.dtype)
        )
        return Params((gw1, gw2), (gb1, gb2), params.d, params.width)
    us, dus, _ = forward(arch, params, x, derivative=True)
    deltas = backward(arch, params, dus, x.shape[0])
    gws, gbs = [], []
    for s, u, delta, b in zip(arch.stages, us, deltas, params.biases):
        rd = delta * r[:, None]
        gws.append((rd.T @ u) * dt(s.w_mult))
        gbs.append(None if b is None else rd.sum(axis=0) * dt(s.b_mult))
    return Params(tuple(gws), tuple(gbs), params.d, params.width)


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
    return Params(tuple(weights), tuple(biases), like.d, like.width)


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
        params.d,
        params.width,
    )
