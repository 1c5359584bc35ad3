"""The general network engine: any layer graph, inputs with 0, 1 or 2 spatial axes.

Memory is bounded by working on blocks: nothing of size ``n1·n2·P²`` (``P`` positions) ever
exists, only ``b1·b2·P²`` for a block of ``b1 × b2`` example pairs.

1. **Self pass** (``self_pass``): every example against itself, in batches, as ``(b, *S, 1, *S)``
   states. Activations and ``layer_norm`` read the per-position variances off the diagonal of
   these states and *record* them on a tape (one ``(n, *S)`` array per such layer, in the order
   the layers are visited). Its final state is the Gram diagonal.
2. **Pair pass** (``pair_block``): a block of example pairs as ``(b1, *S, b2, *S)``; the same
   rules replay the two tapes for their variances (so pooling layers, whose variances would need
   each example's full spatial covariance, cost nothing extra here).

Symmetric Grams compute upper blocks only, mirror them, and take the diagonal from the self
pass (each point has correlation exactly 1 with itself). ``BLOCK_ENTRIES`` bounds the entries of
one working array; a block holds a few of them (``nngp``, ``ntk``, temporaries of one rule).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from core.backend import array_namespace
from core.kernels import spec as S
from core.kernels.rules import Context, PairState, conv_on_inputs, run_layers
from core.kernels.shapes import Shape, trace, trace_layers

Array = Any

#: Most entries of one working array of a block (nngp or ntk): 2^21 = 8 MiB in float32, so a block
#: stays in the L3 cache (measured fastest on Myrtle-5 32×32: 2^20…2^23 tried).
BLOCK_ENTRIES = 2**21
#: Threads running blocks at once (NumPy releases the GIL in its loops).
THREADS = 2


def largest_positions(spec: S.Network, feature_shape: tuple[int, ...]) -> int:
    """The most spatial positions any representation of the network has (1 when fully connected)."""
    best = 1

    def walk(layers: tuple[S.Layer, ...], shape: Shape, where: str) -> Shape:
        nonlocal best
        best = max(best, shape.positions)
        for i, layer in enumerate(layers):
            if isinstance(layer, S.Branches):
                for b, branch in enumerate(layer.branches):
                    walk(branch, shape, f"{where}[{i}].branches[{b}]")
            shape = trace_layers((layer,), shape, spec.parameterization, where)
            best = max(best, shape.positions)
        return shape

    dims = tuple(feature_shape)
    walk(spec.layers, Shape(dims[:-1], dims[-1]), "layers")
    return best


def pair_work(spec: S.Network, feature_shape: tuple[int, ...]) -> int:
    """A cost estimate of one example pair, in multiply-adds (``P²`` per layer, × filter size
    for conv): what a synchronous request's work limit compares against."""
    total = 0

    def walk(layers: tuple[S.Layer, ...], shape: Shape) -> Shape:
        nonlocal total
        for layer in layers:
            factor = math.prod(layer.filter_shape) if isinstance(layer, S.Conv) else 4
            if isinstance(layer, S.Branches):
                for branch in layer.branches:
                    walk(branch, shape)
            total += factor * shape.positions**2
            shape = trace_layers((layer,), shape, spec.parameterization)
        return shape

    dims = tuple(feature_shape)
    walk(spec.layers, Shape(dims[:-1], dims[-1]))
    return max(total, 1)


# --------------------------------------------------------------------------------- variances
def _row_col(row: Array, col: Array, k: int, self_blocks: bool) -> tuple[Array, Array]:
    """Broadcast per-position variances ``(b1, *S)``, ``(b2, *S)`` against ``(b1, *S, b2, *S)``."""
    spatial = row.shape[1:]
    ones = (1,) * k
    r = row.reshape(row.shape[0], *spatial, 1, *ones)
    c = col.reshape(col.shape[0] if self_blocks else 1, *ones, 1 if self_blocks else col.shape[0], *spatial)
    return r, c


@dataclass
class Recorder:
    """Self pass: variances from each example's own diagonal, appended to ``tape``."""

    tape: list[Array] = field(default_factory=list)

    def __call__(self, state: PairState) -> tuple[Array, Array]:
        b, p = state.nngp.shape[0], math.prod(state.spatial)
        xp = array_namespace(state.nngp)
        diag = xp.diagonal(state.nngp.reshape(b, p, p), axis1=1, axis2=2).reshape(b, *state.spatial).copy()
        self.tape.append(diag)
        return _row_col(diag, diag, state.k, True)


@dataclass
class Replay:
    """Pair pass: the recorded variances of the block's rows and columns, in order."""

    rows: list[Array]
    cols: list[Array]
    position: int = 0

    def __call__(self, state: PairState) -> tuple[Array, Array]:
        r, c = self.rows[self.position], self.cols[self.position]
        self.position += 1
        return _row_col(r, c, state.k, False)


# ----------------------------------------------------------------------------------- passes
def _examples(x: Array) -> tuple[Array, int, tuple[int, ...]]:
    """``x`` as ``(n, P, C)``, with ``C`` and the spatial shape."""
    spatial = tuple(x.shape[1:-1])
    c = x.shape[-1]
    return x.reshape(x.shape[0], math.prod(spatial), c), c, spatial


def self_state(x: Array, want_ntk: bool, scale: float | None = None, norms: Array | None = None) -> PairState:
    """``<x_s, x_s'>/C`` of every example with itself: ``(n, *S, 1, *S)``. ``scale`` replaces the
    divisor ``C``; ``norms`` (fully connected only) are the ``‖x‖²`` to use, e.g. the diagonal of
    the product that gives the pairs, so that a duplicate row has correlation exactly 1."""
    xr, c, spatial = _examples(x)
    if norms is not None:
        g = norms.reshape(-1, 1).astype(x.dtype, copy=True)
    else:
        g = xr @ xr.transpose(0, 2, 1)
    g /= x.dtype.type(c if scale is None else scale)
    nngp = g.reshape(x.shape[0], *spatial, 1, *spatial)
    return PairState(nngp, 0.0 if want_ntk else None, len(spatial), c)


def pair_state(x1: Array, x2: Array, want_ntk: bool, scale: float | None = None) -> PairState:
    """``<x_s, x'_s'>/C`` between every pair: ``(b1, *S, b2, *S)`` (``scale`` replaces ``C``)."""
    a, c, spatial = _examples(x1)
    b, _, _ = _examples(x2)
    g = a.reshape(-1, c) @ b.reshape(-1, c).T
    g /= x1.dtype.type(c if scale is None else scale)
    nngp = g.reshape(x1.shape[0], *spatial, x2.shape[0], *spatial)
    return PairState(nngp, 0.0 if want_ntk else None, len(spatial), c)


def _run(spec: S.Network, x1: Array, x2: Array | None, ctx: Context, want_ntk: bool, scale: float | None = None,
         norms: Array | None = None) -> PairState:
    """The network on ``x1`` × ``x2`` (``None``: self blocks); a leading conv works on patches."""
    layers, start = spec.layers, 0
    if layers and isinstance(layers[0], S.Conv) and x1.ndim > 2:
        state = conv_on_inputs(x1, x2, layers[0], ctx, want_ntk)
        layers, start = layers[1:], 1
    elif x2 is None:
        state = self_state(x1, want_ntk, scale, norms)
    else:
        state = pair_state(x1, x2, want_ntk, scale)
    state = run_layers(layers, state, ctx, start)
    if isinstance(state.ntk, float):  # no dense/conv layer at all
        xp = array_namespace(state.nngp)
        state = replace(state, ntk=xp.zeros_like(state.nngp))
    return state


@dataclass
class SelfPass:
    """The Gram diagonal (``nngp``, ``ntk``: ``(n,)``) and the variance tape of a set of inputs."""

    nngp: Array
    ntk: Array | None
    tape: list[Array]

    def rows(self, sl: slice) -> list[Array]:
        return [t[sl] for t in self.tape]


def self_pass(spec: S.Network, x: Array, want_ntk: bool, batch: int, scale: float | None = None,
              norms: Array | None = None) -> SelfPass:
    """Run every example of ``x`` against itself, ``batch`` examples at a time (``scale``, ``norms``:
    see ``self_state``)."""
    xp = array_namespace(x)
    nngp, ntk, tapes = [], [], []
    for i0 in range(0, x.shape[0], batch):
        recorder = Recorder()
        ctx = Context(spec.parameterization, recorder, True, check_finite=True)
        part = None if norms is None else norms[i0 : i0 + batch]
        out = _run(spec, x[i0 : i0 + batch], None, ctx, want_ntk, scale, part)
        nngp.append(out.nngp.reshape(-1))
        if want_ntk:
            ntk.append(out.ntk.reshape(-1))
        tapes.append(recorder.tape)
    tape = [xp.concatenate(parts) for parts in zip(*tapes)]
    return SelfPass(xp.concatenate(nngp), xp.concatenate(ntk) if want_ntk else None, tape)


def pair_block(spec: S.Network, x1: Array, x2: Array, rows: list[Array], cols: list[Array], want_ntk: bool,
               scale: float | None = None) -> PairState:
    """The final state ``(b1, b2)`` of a block of example pairs."""
    ctx = Context(spec.parameterization, Replay(rows, cols), False)
    return _run(spec, x1, x2, ctx, want_ntk, scale)


# ----------------------------------------------------------------------------------- driver
def block_edges(positions: int, n1: int, n2: int, entries: int = BLOCK_ENTRIES) -> tuple[int, int]:
    """Block sizes ``(b1, b2)`` with ``b1·b2·positions² ≤ entries`` (at least 1 × 1)."""
    pairs = max(1, entries // (positions * positions))
    b1 = max(1, min(n1, math.isqrt(pairs)))
    b2 = max(1, min(n2, pairs // b1))
    return b1, b2


def blocks(n1: int, n2: int, b1: int, b2: int, symmetric: bool) -> Iterator[tuple[slice, slice]]:
    """Row/column slices of ``b1 × b2`` blocks (square upper blocks only when symmetric)."""
    if symmetric:
        b1 = b2 = min(b1, b2)
    for i0 in range(0, n1, b1):
        for j0 in range(i0 if symmetric else 0, n2, b2):
            yield slice(i0, min(n1, i0 + b1)), slice(j0, min(n2, j0 + b2))


def store_block(out: Array, rows: slice, cols: slice, block: Array, symmetric: bool) -> None:
    """Write ``block`` at ``out[rows, cols]``; when symmetric, a diagonal block keeps its upper
    triangle mirrored (exactly symmetric) and an off-diagonal one is written transposed too."""
    xp = array_namespace(out)
    if symmetric and rows == cols:
        block = xp.triu(block) + xp.triu(block, 1).T
    out[rows, cols] = block
    if symmetric and rows != cols:
        out[cols, rows] = block.T


def network_gram(spec: S.Network, x1: Array, x2: Array | None, want_ntk: bool, entries: int = BLOCK_ENTRIES,
                 input_scale: float | None = None) -> tuple[Array, Array | None]:
    """``(nngp, ntk)`` (``n1 × n2``; ``ntk`` None unless ``want_ntk``) of ``spec`` on ``x1`` × ``x2``
    (``None``: ``x1`` against itself, exactly symmetric). Inputs are ``(n, d)``, ``(n, L, C)`` or
    ``(n, H, W, C)`` arrays of one float dtype (NumPy; CuPy for fully connected networks);
    ``input_scale`` replaces the divisor ``C`` of the input covariance. ``ValueError`` if the
    network does not fit the inputs."""
    trace(spec, x1.shape[1:])
    xp = array_namespace(x1)
    symmetric = x2 is None
    other = x1 if symmetric else x2
    if other.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x1 rows have shape {list(x1.shape[1:])} but x2 rows {list(other.shape[1:])}")
    p = largest_positions(spec, x1.shape[1:])
    n1, n2 = x1.shape[0], other.shape[0]
    batch = max(1, entries // (p * p))
    first = self_pass(spec, x1, want_ntk, batch, input_scale)
    second = first if symmetric else self_pass(spec, other, want_ntk, batch, input_scale)
    nngp = xp.empty((n1, n2), x1.dtype)
    ntk = xp.empty((n1, n2), x1.dtype) if want_ntk else None
    b1, b2 = block_edges(p, n1, n2, entries)

    def run(block: tuple[slice, slice]) -> None:
        rs, cs = block
        out = pair_block(spec, x1[rs], other[cs], first.rows(rs), second.rows(cs), want_ntk, input_scale)
        store_block(nngp, rs, cs, out.nngp, symmetric)
        if ntk is not None:
            store_block(ntk, rs, cs, out.ntk, symmetric)

    todo = list(blocks(n1, n2, b1, b2, symmetric))
    if len(todo) > 1 and THREADS > 1 and xp is np:
        # one block per thread, BLAS single-threaded meanwhile: its idle threads would spin on the
        # cores the blocks use (the limit is process-wide while it lasts)
        with ThreadPoolExecutor(THREADS) as pool, threadpool_limits(1, user_api="blas"):
            list(pool.map(run, todo))
    else:
        for block in todo:
            run(block)
    if symmetric:  # the exact diagonal from the self pass
        xp.fill_diagonal(nngp, first.nngp)
        if ntk is not None:
            xp.fill_diagonal(ntk, first.ntk)
    return nngp, ntk


def network_diagonal(spec: S.Network, x: Array, want_ntk: bool = True, entries: int = BLOCK_ENTRIES,
                     input_scale: float | None = None) -> tuple[Array, Array | None]:
    """``(nngp, ntk)`` diagonals ``k(x_i, x_i)`` (``(n,)``) without any pair of distinct examples."""
    trace(spec, x.shape[1:])
    p = largest_positions(spec, x.shape[1:])
    out = self_pass(spec, x, want_ntk, max(1, entries // (p * p)), input_scale)
    return out.nngp, out.ntk
