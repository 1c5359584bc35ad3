"""Infinite-width rules of every layer kind on a ``PairState`` (neural-tangents' ``kernel_fn``s).

A ``PairState`` holds ``nngp`` and ``ntk`` in the layout of ``spatial.py``: ``(B1, *S, B2, *S)``
(``k`` spatial axes; a ``B1 × B2`` matrix when ``k = 0``) and the channel ``width``
(the fan-in of a following dense layer under standard parameterization). Rules that need the
per-position variances of the two sides (activations, ``layer_norm``) ask ``ctx.variances``,
which reads them from the diagonal of a per-example state or from a recorded tape
(``engine.py``). Conventions (neural-tangents; ``w² = w_std²``, ``b² = b_std²`` or 0):

- ``dense``: ``nngp' = w²·nngp + b²``; NTK param. ``ntk' = nngp' + w²·ntk``; standard param.
  ``ntk' = fan_in·nngp + w²·ntk + [bias]``, ``fan_in`` = the input's channels;
- ``conv``: the same with ``nngp``, ``ntk`` replaced by their filter means (``spatial.conv_mean``)
  and ``fan_in`` = channels × filter size;
- activations: ``nngp' = E[φ(u)φ(v)]``, ``ntk' = ntk·E[φ'(u)φ'(v)]`` (``activations.py``,
  ``quadrature.py``) with the variances of the two positions;
- ``layer_norm``: ``nngp, ntk ÷ √((ε + q₁)(ε + q₂))``;
- pooling, ``flatten``, global pooling: the linear maps of ``spatial.py`` on both;
- ``branches``: every branch on the same state, then ``sum`` (``Σ nngp_b``, ``Σ ntk_b``) or
  ``product`` (``Π nngp_b``, ``Σ_b ntk_b Π_{c≠b} nngp_c``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from core.backend import array_namespace
from core.kernels import spatial
from core.kernels import spec as S
from core.kernels.activations import ACTIVATIONS
from core.kernels.fused import run_activation
from core.kernels.quadrature import FUNCTIONS, pair_matrix
from core.kernels.registry import kind_of

Array = Any


@dataclass(frozen=True, slots=True)
class PairState:
    """``nngp``/``ntk`` with ``k`` spatial axes, channel ``width``. ``ntk`` is None when not tracked
    and the float ``0.0`` while it is identically zero (before the first dense/conv layer)."""

    nngp: Array
    ntk: Array | float | None
    k: int
    width: int | None

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.nngp.shape[1 : 1 + self.k])

    def linear(self, fn: Callable[[Array], Array], **changes: Any) -> PairState:
        """The same linear map on ``nngp`` and ``ntk``."""
        ntk = self.ntk if self.ntk is None or isinstance(self.ntk, float) else fn(self.ntk)
        return replace(self, nngp=fn(self.nngp), ntk=ntk, **changes)


class VarianceSource(Protocol):
    """Per-position variances ``(q_row, q_col)`` for ``state``, broadcastable to ``state.nngp``."""

    def __call__(self, state: PairState) -> tuple[Array, Array]: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What rules need besides the state: the parameterization and the variances."""

    parameterization: str
    variances: VarianceSource
    #: per-example "self" blocks (``B2 = 1``, column variances per row example)
    self_blocks: bool
    #: check every layer's output for overflow (the self pass: a PSD kernel's entries are bounded
    #: by its diagonal, so the first layer whose diagonal overflows is where the kernel does)
    check_finite: bool = False
    #: where the layers being run sit in the spec (error messages)
    where: str = "layers"


class KernelOverflow(ValueError):
    """A layer's kernel is not finite in the working dtype; ``path`` names the layer
    (``("layers", 2)``, ``("layers", 4, "branches", 0, 1)``)."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.path = path


def _path(where: str) -> tuple[str | int, ...]:
    """``"layers[4].branches[0][1]"`` → ``("layers", 4, "branches", 0, 1)``."""
    out: list[str | int] = []
    for part in where.replace("]", "").replace("[", ".").split("."):
        if part:
            out.append(int(part) if part.isdigit() else part)
    return tuple(out)


def _check_finite(state: PairState, layer: S.Layer, where: str) -> None:
    xp = array_namespace(state.nngp)
    arrays = [state.nngp] + ([] if state.ntk is None or isinstance(state.ntk, float) else [state.ntk])
    if not all(bool(xp.isfinite(a).all()) for a in arrays):
        dtype = state.nngp.dtype
        raise KernelOverflow(
            f"{where} ({kind_of(layer).type}): the kernel overflows {dtype} here (variances beyond "
            f"{float(np.finfo(dtype).max):.3g}); reduce w_std/b_std or the input scale, use fewer layers, or use "
            "float64", _path(where))


Rule = Callable[[PairState, Any, Context], PairState]


def dense_constants(layer: S.Dense | S.Conv) -> tuple[float, float, float]:
    """``(w², b², bias)``: ``bias`` = 1.0 if the layer has a bias parameter (even with
    ``b_std = 0``: it is trained under standard parameterization) else 0.0. Squares beyond the
    float range are ``inf`` (and reported where the kernel overflows), never an exception."""
    w, b = float(layer.w_std), None if layer.b_std is None else float(layer.b_std)
    return w * w, 0.0 if b is None else b * b, 0.0 if b is None else 1.0


def require_fan_in(width: int | None, position: int) -> int:
    """``width`` as the fan-in of a layer under standard parameterization, or a clear ``ValueError``."""
    if width is None:
        raise ValueError(f"standard parameterization needs the width of the dense layer before layer {position} "
                         "(its fan-in): set `width` on every dense/conv layer but the last")
    return int(width)


def _affine(state: PairState, mean_nngp: Array, mean_ntk: Array | None, layer: S.Dense | S.Conv,
            fan_in: int | None, ctx: Context, fresh: bool = False) -> PairState:
    """The affine rule from the (filter-)means of ``nngp`` and ``ntk``; ``fresh``: the means are
    new arrays this rule may overwrite (conv), else they are the state's own (never mutated)."""
    w2, b2, bias = dense_constants(layer)  # type: ignore[arg-type]
    dt = state.nngp.dtype.type
    zero = isinstance(mean_ntk, float)  # ntk ≡ 0 before: skip its terms (arrays are never mutated: aliases are safe)
    if fresh and ctx.parameterization == "ntk":
        nngp = mean_nngp
        nngp *= dt(w2)
        nngp += dt(b2)
        ntk = mean_ntk
        if ntk is not None:
            if zero:
                ntk = nngp
            else:
                ntk *= dt(w2)
                ntk += nngp
        return replace(state, nngp=nngp, ntk=ntk, width=layer.width)
    nngp = dt(w2) * mean_nngp + dt(b2)
    ntk = None
    if mean_ntk is not None:
        if ctx.parameterization == "ntk":
            ntk = nngp if zero else nngp + dt(w2) * mean_ntk
        else:
            ntk = dt(require_fan_in(fan_in, 0)) * mean_nngp + dt(bias)
            if not zero:
                ntk += dt(w2) * mean_ntk
    return replace(state, nngp=nngp, ntk=ntk, width=layer.width)


def dense_rule(state: PairState, layer: S.Dense, ctx: Context) -> PairState:
    return _affine(state, state.nngp, state.ntk, layer, state.width, ctx)


def conv_rule(state: PairState, layer: S.Conv, ctx: Context) -> PairState:
    strides = layer.strides or (1,) * state.k
    mean = (lambda a: spatial.conv_mean(a, state.k, layer.filter_shape, strides, layer.padding))
    fan_in = None if state.width is None else state.width * math.prod(layer.filter_shape)
    ntk = state.ntk if state.ntk is None or isinstance(state.ntk, float) else mean(state.ntk)
    return _affine(state, mean(state.nngp), ntk, layer, fan_in, ctx, fresh=True)


def conv_on_inputs(x1: Array, x2: Array | None, layer: S.Conv, ctx: Context, want_ntk: bool) -> PairState:
    """``conv_rule`` on the input state, from patches: the filter mean of ``<x_s, x'_s'>/C`` is
    ``<patch_s(x), patch_s'(x')>/(C·f)``, one BLAS product instead of a pass over ``P²`` entries.
    ``x2`` None: per-example self blocks."""
    k = x1.ndim - 2
    strides = layer.strides or (1,) * k
    c = x1.shape[-1]
    p1 = spatial.patches(x1, layer.filter_shape, strides, layer.padding)
    f_c = p1.shape[-1]
    if x2 is None:
        flat = p1.reshape(p1.shape[0], -1, f_c)
        g = np.matmul(flat, flat.transpose(0, 2, 1))
        mean = g.reshape(p1.shape[0], *p1.shape[1:-1], 1, *p1.shape[1:-1])
    else:
        p2 = spatial.patches(x2, layer.filter_shape, strides, layer.padding)
        g = p1.reshape(-1, f_c) @ p2.reshape(-1, f_c).T
        mean = g.reshape(*p1.shape[:-1], *p2.shape[:-1])
    mean /= x1.dtype.type(f_c)
    state = PairState(mean, 0.0 if want_ntk else None, k, c)
    return _affine(state, mean, state.ntk, layer, c * math.prod(layer.filter_shape), ctx, fresh=True)


def _numerical(state: PairState, layer: S.Activation, q_row: Array, q_col: Array, ctx: Context, want: bool):
    phi, dphi = FUNCTIONS[layer.name]
    shape = state.nngp.shape
    b1, b2, p = shape[0], shape[state.k + 1], math.prod(state.spatial)
    if not ctx.self_blocks:
        q12 = state.nngp.reshape(b1 * p, b2 * p)
        new, dot = pair_matrix(phi, dphi if want else None, q_row.reshape(-1), q_col.reshape(-1), q12)
        return new.reshape(shape), (None if dot is None else dot.reshape(shape))
    new = np.empty_like(state.nngp)
    dot = np.empty_like(state.nngp) if want else None
    for i in range(b1):  # each example against itself: its own variances on both sides
        q = q_row[i].reshape(-1)
        v, d = pair_matrix(phi, dphi if want else None, q, q, state.nngp[i].reshape(p, p))
        new[i] = v.reshape(shape[1:])
        if dot is not None:
            dot[i] = d.reshape(shape[1:])
    return new, dot


def activation_rule(state: PairState, layer: S.Activation, ctx: Context) -> PairState:
    if layer.name == "identity":
        return state
    q_row, q_col = ctx.variances(state)
    want = state.ntk is not None and not isinstance(state.ntk, float)
    if layer.name in FUNCTIONS:
        nngp, dot = _numerical(state, layer, q_row, q_col, ctx, want)
    elif not ctx.self_blocks and isinstance(state.nngp, np.ndarray):  # the compiled pass, on a copy
        shape = state.nngp.shape
        rows, cols = q_row.size, q_col.size
        nngp = state.nngp.reshape(rows, cols).copy()
        ntk = state.ntk.reshape(rows, cols).copy() if want else None
        run_activation(layer, q_row.reshape(-1), q_col.reshape(-1), nngp, ntk, serial=True)
        return replace(state, nngp=nngp.reshape(shape), ntk=ntk.reshape(shape) if want else state.ntk)
    else:
        rule = ACTIVATIONS[layer.name]
        nngp, dot = rule.pair(rule.aux(q_row, layer), rule.aux(q_col, layer), state.nngp, layer, want)
    return replace(state, nngp=nngp, ntk=state.ntk * dot if want else state.ntk)


def layer_norm_rule(state: PairState, layer: S.LayerNorm, ctx: Context) -> PairState:
    q_row, q_col = ctx.variances(state)
    eps = state.nngp.dtype.type(layer.eps)
    scale = 1 / (np.sqrt(eps + q_row) * np.sqrt(eps + q_col))
    return state.linear(lambda a: a * scale)


def pool_rule(state: PairState, layer: S.AvgPool | S.SumPool, ctx: Context) -> PairState:
    strides = layer.strides or layer.window_shape
    average = isinstance(layer, S.AvgPool)
    return state.linear(lambda a: spatial.pool(a, state.k, layer.window_shape, strides, layer.padding, average))


def global_pool_rule(state: PairState, layer: S.GlobalAvgPool | S.GlobalSumPool, ctx: Context) -> PairState:
    average = isinstance(layer, S.GlobalAvgPool)
    return state.linear(lambda a: spatial.global_pool(a, state.k, average), k=0)


def flatten_rule(state: PairState, layer: S.Flatten, ctx: Context) -> PairState:
    width = None if state.width is None else state.width * math.prod(state.spatial)
    return state.linear(lambda a: spatial.flatten(a, state.k), k=0, width=width)


def branches_rule(state: PairState, layer: S.Branches, ctx: Context) -> PairState:
    outs = [run_layers(branch, state, replace(ctx, where=f"{ctx.where}.branches[{b}]"))
            for b, branch in enumerate(layer.branches)]
    first = outs[0]
    width = next((o.width for o in outs if o.width is not None), None)
    if layer.merge == "sum":
        nngp, ntk = first.nngp, first.ntk
        for o in outs[1:]:
            nngp = nngp + o.nngp
            ntk = None if ntk is None else ntk + o.ntk
        return replace(first, nngp=nngp, ntk=ntk, width=width)
    nngp = first.nngp
    for o in outs[1:]:
        nngp = nngp * o.nngp
    ntk = None if first.ntk is None else 0.0
    if ntk is not None:
        for b, o in enumerate(outs):
            term = o.ntk
            for c, other in enumerate(outs):
                if c != b:
                    term = term * other.nngp
            ntk = ntk + term
    return replace(first, nngp=nngp, ntk=ntk, width=width)


#: The infinite-width rule of every registered layer kind (keyed like ``registry.LAYER_KINDS``).
RULES: dict[str, Rule] = {
    "dense": dense_rule,
    "conv": conv_rule,
    "avg_pool": pool_rule,
    "sum_pool": pool_rule,
    "global_avg_pool": global_pool_rule,
    "global_sum_pool": global_pool_rule,
    "flatten": flatten_rule,
    "layer_norm": layer_norm_rule,
    "branches": branches_rule,
    **{name: activation_rule for name in (*S.CLOSED_FORM_ACTIVATIONS, "elementwise")},
}


def run_layers(layers: tuple[S.Layer, ...], state: PairState, ctx: Context, start: int = 0) -> PairState:
    """``layers`` applied in order (pure: ``state`` is not modified); ``start``: the position of
    ``layers[0]`` in ``ctx.where`` (error messages)."""
    for i, layer in enumerate(layers, start):
        where = f"{ctx.where}[{i}]"
        inner = replace(ctx, where=where) if isinstance(layer, S.Branches) else ctx
        state = RULES[kind_of(layer).type](state, layer, inner)
        if ctx.check_finite:
            _check_finite(state, layer, where)
    return state
