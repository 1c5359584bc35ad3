"""Exact empirical (finite-width) NTK and NNGP of one network drawn from ``(width, seed)``.

``K(x, x') = ⟨∇θ f(x), ∇θ f(x')⟩`` computed without per-example Jacobians, layer by layer during
one backward pass. For a dense/conv layer with inputs ``U_s`` (the input at position ``s`` for
dense, the patch at output position ``s`` for conv) and backward signals ``Δ_s = ∂f/∂z_s``:

    K_layer(x, x') = w_mult² Σ_{s,s'} ⟨Δ_s, Δ'_s'⟩⟨U_s, U'_s'⟩ + b_mult² ⟨Σ_s Δ_s, Σ_s' Δ'_s'⟩  [bias]

computed by whichever route is cheaper for the layer (:func:`route`):

- ``"gram"``: ``(ΔΔ'ᵀ) ∘ (UU'ᵀ)`` over blocks of example pairs, summed over position pairs
  (one position, e.g. fully connected layers: exactly ``(ΔΔᵀ)∘(UUᵀ)``);
- ``"grad"``: per-example weight gradients ``G_i = Σ_s Δ_s ⊗ U_s`` in chunks of output
  channels, then ``G Gᵀ``.

Outputs, named as the infinite-width kernels:

- ``Network``: ``"ntk"`` (the sum above over all layers) and ``"nngp"`` = ``(w_std²/fan_in)
  U U'ᵀ + b_std²`` of the readout (``U`` its input features), i.e. the output covariance over a
  fresh readout given the last hidden features. In NTK parameterization this is exactly the
  readout layer's parameter contribution to the NTK; in standard parameterization the readout
  contribution is ``U U'ᵀ + 1`` (which grows with the width), so the ``nngp`` uses the same
  prior-variance form there. Either way it converges to the infinite NNGP as width → ∞.
- ``TwoLayerRelu``: ``"ntk_a"`` (first-layer ``a`` part), ``"ntk_b"`` (readout ``b`` part),
  ``"ntk"`` = their sum and ``"nngp"`` = ``ntk_b``.

Cost. Networks with one hidden width (exactly two dense layers on ``n × d`` inputs, e.g.
``[Dense, Relu, Dense]`` or ``two_layer_relu``) are processed in blocks of hidden units: time
``O(n1·n2·m + (n1+n2)·d·m)`` and memory ``O(m·d)`` for the parameters plus
``O((n1+n2)·chunk)``; widths up to 2^18 with a few hundred points take seconds. Other networks
hold their parameters and every layer's activations for the ``n1 + n2`` inputs, plus bounded
blocks per layer (:func:`working_memory_entries` counts it all). With ``x2=None`` the result is
exactly symmetric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.empirical.activations import apply_chain
from core.empirical.layers import (
    FINITE,
    Features,
    Node,
    backward_layers,
    example_chunk,
    forward_layers,
    walk,
)
from core.empirical.network import (
    DRAW_BLOCK,
    Architecture,
    EmpiricalSpec,
    Params,
    _float_dtype,
    architecture,
    as_inputs,
    chunk_units,
    init_params,
    input_ranks,
    parameter_count,
    two_layer_blocks,
)
from core.kernels.spec import TwoLayerRelu, resolve_outputs

__all__ = [
    "empirical_kernels",
    "kernels_from_params",
    "ntk_work",
    "parameter_count",
    "route",
    "working_memory_entries",
]

#: Most entries of one working array of a pair block (gram route) or gradient chunk (grad route).
BLOCK_ENTRIES = 2**21
#: Conv patches of all examples are extracted once per layer below this many entries.
ALL_PATCHES_ENTRIES = 2**24


def empirical_kernels(
    spec: EmpiricalSpec,
    x1: np.typing.ArrayLike,
    x2: np.typing.ArrayLike | None = None,
    *,
    width: int,
    seed: int,
    outputs: list[str] | tuple[str, ...] | None = None,
    dtype: np.typing.DTypeLike = np.float64,
) -> dict[str, np.ndarray]:
    """Empirical kernels of the network ``spec`` drawn with ``(width, seed)``; ``x2=None``: x1 vs x1.

    ``x1``/``x2``: ``(n, d)``, or for networks also ``(n, L, C)``/``(n, H, W, C)``. The network
    depends on ``(spec, row shape, width, seed)`` only (not on the inputs), so calls with
    different ``x`` see the same network. Returns ``{name: (n1, n2) array of dtype}`` for the
    requested ``outputs`` (default: all of ``output_names(spec)``). Raises ``ValueError`` on an
    invalid spec, a network that does not fit its input, bad shapes, non-finite inputs or
    unknown output names.
    """
    dt = _float_dtype(dtype)
    chosen = resolve_outputs(spec, outputs)
    a = as_inputs(x1, dt, name="x1", ranks=input_ranks(spec))
    b = None if x2 is None else as_inputs(x2, dt, a.shape[1:], name="x2", ranks=input_ranks(spec))
    architecture(spec, a.shape[1:], width)  # validate before drawing
    params = init_params(spec, a.shape[1:], width, seed, dt)
    return kernels_from_params(spec, params, a, b, outputs=chosen)


def kernels_from_params(
    spec: EmpiricalSpec,
    params: Params,
    x1: np.typing.ArrayLike,
    x2: np.typing.ArrayLike | None = None,
    *,
    outputs: list[str] | tuple[str, ...] | None = None,
    chunk: int | None = None,
    force_route: str | None = None,
) -> dict[str, np.ndarray]:
    """As :func:`empirical_kernels` for given parameters (e.g. a trained ``θ_t``), in their dtype.

    ``chunk`` overrides the number of hidden units per block in the two-layer path and
    ``force_route`` (``"gram"``/``"grad"``) the route of every layer with several positions
    (both for testing).
    """
    chosen = resolve_outputs(spec, outputs)
    arch = architecture(spec, params.feature_shape, params.width)
    ranks = input_ranks(spec)
    a = as_inputs(x1, params.dtype, params.feature_shape, name="x1", ranks=ranks)
    sym = x2 is None
    x = a if sym else np.concatenate([a, as_inputs(x2, params.dtype, params.feature_shape, name="x2", ranks=ranks)])
    n1 = a.shape[0]
    if isinstance(spec, TwoLayerRelu):
        need_hidden = any(o in ("ntk", "ntk_a") for o in chosen)
    else:
        need_hidden = "ntk" in chosen
    if arch.stages is not None:
        gram, hidden = _two_stage(arch, params, x, n1, sym, need_hidden, chunk)
    else:
        gram, hidden = _general(arch, params, x, n1, sym, need_hidden, force_route)
    last = arch.readout.affine
    readout = gram * last.w_mult**2
    if last.has_bias:
        readout += last.b_mult**2
    results: dict[str, np.ndarray] = {}
    for name in chosen:
        if name == "ntk":
            results[name] = readout + hidden
        elif name == "ntk_a":
            results[name] = hidden
        elif name == "ntk_b" or (name == "nngp" and isinstance(spec, TwoLayerRelu)):
            results[name] = readout.copy() if "ntk_b" in results or "nngp" in results else readout
        else:  # network nngp
            nngp = gram * last.prior_w_var
            if last.prior_b_var:
                nngp += last.prior_b_var
            results[name] = nngp
    return results


def _cross(m: np.ndarray, n1: int, sym: bool) -> np.ndarray:
    """``M M'ᵀ`` between the first ``n1`` rows and the rest (or all rows against themselves)."""
    return m @ m.T if sym else m[:n1] @ m[n1:].T


def _two_stage(
    arch: Architecture,
    params: Params,
    x: np.ndarray,
    n1: int,
    sym: bool,
    need_hidden: bool,
    chunk: int | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Chunked path: (readout-input Gram Σ U1U1'ᵀ, hidden-stage NTK contribution or None)."""
    s1 = arch.stages[0].affine
    u0, _ = apply_chain(arch.stages[0].acts, x)
    n2 = x.shape[0] if sym else x.shape[0] - n1
    gram = np.zeros((n1, n2), dtype=params.dtype)
    sdelta = np.zeros((n1, n2), dtype=params.dtype) if need_hidden else None
    for _, u1, delta in two_layer_blocks(arch, params, u0, delta=need_hidden, chunk=chunk):
        gram += _cross(u1, n1, sym)
        if sdelta is not None:
            sdelta += _cross(delta, n1, sym)
    if sdelta is None:
        return gram, None
    hidden = sdelta * _cross(u0, n1, sym)
    hidden *= s1.w_mult**2
    if s1.has_bias:
        hidden += sdelta * s1.b_mult**2
    return gram, hidden


# ------------------------------------------------------------------------------ general path
def _pairs(n1: int, n2: int, sym: bool) -> int:
    return n1 * (n1 + 1) // 2 if sym else n1 * n2


def route_costs(node: Node, n1: int, n2: int, sym: bool) -> tuple[int, int]:
    """Multiply-adds of the ``gram`` and ``grad`` routes for one dense/conv node."""
    a = node.affine
    p = node.shape_out.positions
    rows = n1 if sym else n1 + n2
    pairs = _pairs(n1, n2, sym)
    gram = pairs * p * p * (a.fan_in + a.fan_out + 1)
    grad = rows * p * a.fan_out * a.fan_in + pairs * a.fan_out * a.fan_in
    return gram, grad


def route(node: Node, n1: int, n2: int, sym: bool) -> str:
    """``"gram"`` or ``"grad"``: the cheaper way to a dense/conv node's NTK contribution."""
    if node.shape_out.positions == 1:
        return "gram"
    gram, grad = route_costs(node, n1, n2, sym)
    return "gram" if gram <= grad else "grad"


def _pair_block(p: int, width: int, n1: int, n2: int) -> tuple[int, int]:
    """Examples per block ``(b1, b2)``: ``b·p·width`` and ``b1·b2·p²`` within ``BLOCK_ENTRIES``."""
    per_side = max(1, BLOCK_ENTRIES // max(1, p * width))
    pairs = max(1, BLOCK_ENTRIES // (p * p))
    b1 = max(1, min(n1, per_side, math.isqrt(pairs)))
    b2 = max(1, min(n2, per_side, pairs // b1))
    return b1, b2


def _grad_channels(rows: int, fan_in: int, fan_out: int) -> int:
    """Output channels per chunk of per-example gradients ``(rows, c, fan_in)``."""
    return max(1, min(fan_out, BLOCK_ENTRIES // max(1, rows * fan_in)))


class KernelSink:
    """Accumulates the NTK contributions of every dense/conv layer but the readout."""

    def __init__(self, n1: int, n2: int, sym: bool, dtype: np.dtype, force_route: str | None) -> None:
        self.n1, self.n2, self.sym = n1, n2, sym
        self.out = np.zeros((n1, n2), dtype=dtype)
        self.force_route = force_route

    def _cols(self) -> int:
        return 0 if self.sym else self.n1

    def affine(self, node: Node, params: Params, h: np.ndarray, delta: np.ndarray) -> None:
        a = node.affine
        n, p = h.shape[0], node.shape_out.positions
        d = delta.reshape(n, p, a.fan_out)
        scale = self.out.dtype.type(a.w_mult**2)
        if a.has_bias:
            s = d.sum(axis=1)
            self.out += self.out.dtype.type(a.b_mult**2) * _cross(s, self.n1, self.sym)
        feats = Features(node, h)
        choice = route(node, self.n1, self.n2, self.sym)
        if self.force_route is not None and p > 1:
            choice = self.force_route
        if p == 1:
            u = feats.rows(slice(None)).reshape(n, a.fan_in)
            self.out += scale * (_cross(d[:, 0], self.n1, self.sym) * _cross(u, self.n1, self.sym))
        elif choice == "gram":
            self._gram_route(node, feats, d, scale)
        else:
            self._grad_route(node, feats, d, scale)

    def _gram_route(self, node: Node, feats: Features, d: np.ndarray, scale: float) -> None:
        a = node.affine
        p = node.shape_out.positions
        b1, b2 = _pair_block(p, max(a.fan_in, a.fan_out), self.n1, self.n2)
        if self.sym:
            b1 = b2 = min(b1, b2)
        off = self._cols()
        for i0 in range(0, self.n1, b1):
            rs = slice(i0, min(self.n1, i0 + b1))
            u_r = feats.rows(rs).reshape(-1, a.fan_in)
            d_r = d[rs].reshape(-1, a.fan_out)
            for j0 in range(i0 if self.sym else 0, self.n2, b2):
                cs = slice(j0, min(self.n2, j0 + b2))
                cs_rows = slice(cs.start + off, cs.stop + off)
                if self.sym and cs == rs:
                    m = (d_r @ d_r.T) * (u_r @ u_r.T)
                else:
                    m = (d_r @ d[cs_rows].reshape(-1, a.fan_out).T) * (u_r @ feats.rows(cs_rows).reshape(-1, a.fan_in).T)
                block = m.reshape(rs.stop - rs.start, p, cs.stop - cs.start, p).sum(axis=(1, 3))
                block *= scale
                self.out[rs, cs] += block
                if self.sym and cs != rs:
                    self.out[cs, rs] += block.T

    def _grad_route(self, node: Node, feats: Features, d: np.ndarray, scale: float) -> None:
        a = node.affine
        n = d.shape[0]
        conv = node.kind == "conv"
        every = None
        if not conv or n * node.shape_out.positions * a.fan_in <= ALL_PATCHES_ENTRIES:
            every = feats.rows(slice(None))
        step = example_chunk(node) if conv else n
        c = _grad_channels(n, a.fan_in, a.fan_out)
        for o0 in range(0, a.fan_out, c):
            oc = slice(o0, min(a.fan_out, o0 + c))
            g = np.empty((n, oc.stop - oc.start, a.fan_in), dtype=d.dtype)
            for i0 in range(0, n, step):
                rows = slice(i0, i0 + step)
                u = every[rows] if every is not None else feats.rows(rows)
                np.matmul(d[rows, :, oc].transpose(0, 2, 1), u, out=g[rows])
            g = g.reshape(n, -1)
            self.out += scale * _cross(g, self.n1, self.sym)


def _general(
    arch: Architecture,
    params: Params,
    x: np.ndarray,
    n1: int,
    sym: bool,
    need_hidden: bool,
    force_route: str | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Any network: (readout-input Gram U U'ᵀ, NTK of every other layer or None)."""
    body = arch.nodes[:-1]
    readout = arch.readout
    h, caches = forward_layers(body, params, x, keep=need_hidden)
    u = h.reshape(h.shape[0], readout.affine.fan_in)
    gram = _cross(u, n1, sym)
    if not need_hidden:
        return gram, None
    n2 = x.shape[0] if sym else x.shape[0] - n1
    sink = KernelSink(n1, n2, sym, params.dtype, force_route)
    w = params.weights[readout.index][0] * params.dtype.type(readout.affine.w_mult)
    g = np.broadcast_to(w, (x.shape[0], w.size)).reshape(h.shape).copy()
    backward_layers(body, params, caches, g, sink, need_in=False)
    hidden = sink.out
    if sym:  # exactly symmetric whatever the summation order of the blocks
        hidden = np.triu(hidden) + np.triu(hidden, 1).T
    return gram, hidden


# ------------------------------------------------------------------------------ size estimates
def _node_sizes(arch: Architecture) -> tuple[int, int, int]:
    """Per example: entries cached between the passes, the largest representation, the largest scratch."""
    cached, largest, scratch = 0, arch.readout.shape_in.size, 0
    for node in walk(arch.nodes):
        kind = FINITE[node.kind]
        cached += kind.cache_entries(node)
        largest = max(largest, node.shape_in.size, node.shape_out.size)
        scratch = max(scratch, kind.scratch_entries(node))
    return cached, largest, scratch


def _sink_entries(node: Node, n1: int, n2: int, sym: bool) -> int:
    """Working entries of one dense/conv node's NTK contribution."""
    a = node.affine
    rows = n1 if sym else n1 + n2
    p = node.shape_out.positions
    conv = node.kind == "conv"
    total = rows * p * a.fan_out  # the signal Δ, reshaped
    if conv:
        total += min(rows, example_chunk(node)) * p * a.fan_in  # one block of patches
    if p == 1:
        return total + 3 * n1 * n2 + (rows * a.fan_in if conv else 0)
    if route(node, n1, n2, sym) == "gram":
        b1, b2 = _pair_block(p, max(a.fan_in, a.fan_out), n1, n2)
        return total + (b1 + b2) * p * (a.fan_in + a.fan_out) + 3 * b1 * b2 * p * p
    if conv and rows * p * a.fan_in <= ALL_PATCHES_ENTRIES:
        total += rows * p * a.fan_in
    c = _grad_channels(rows, a.fan_in, a.fan_out)
    return total + 2 * rows * c * a.fan_in + n1 * n2


def working_memory_entries(
    spec: EmpiricalSpec, n1: int, n2: int, d: int | Sequence[int], width: int
) -> int:
    """Estimated float entries held at peak by :func:`empirical_kernels` (multiply by the itemsize).

    ``d``: the input's row shape (an int for ``n × d``). Counts the parameters (plus the float64
    draw buffer), the inputs, the per-block (two dense layers) or per-layer (other networks)
    activations, backward signals and working blocks for ``n1 + n2`` rows, and the output
    matrices. Conservative for ``x2=None`` (pass ``n2 = n1``). Raises ``ValueError`` for an
    invalid spec or a network that does not fit the input.
    """
    arch = architecture(spec, d, width)
    rows = int(n1) + int(n2)
    params = parameter_count(spec, d, width)
    draw = 2 * min(DRAW_BLOCK, max(math.prod(node.affine.weight_shape) for node in arch.affine))  # float64 buffer
    inputs = 2 * rows * math.prod(arch.feature_shape)
    outputs = 8 * int(n1) * int(n2)
    if arch.stages is not None:
        activations = 6 * rows * chunk_units(rows, width)
        return params + draw + inputs + activations + outputs
    cached, largest, scratch = _node_sizes(arch)
    activations = rows * (cached + 3 * largest + scratch)
    sink = max((_sink_entries(node, int(n1), int(n2), False) for node in arch.affine[:-1]), default=0)
    return params + draw + inputs + activations + sink + outputs


def forward_work(arch: Architecture) -> int:
    """Multiply-adds of one forward pass per example (dense/conv GEMMs; other layers per entry)."""
    total = 0
    for node in walk(arch.nodes):
        if node.affine is not None:
            total += node.shape_out.positions * node.affine.fan_in * node.affine.fan_out
        elif node.window:
            total += node.shape_out.size * math.prod(node.window)
        elif not node.branches:
            total += node.shape_in.size
    return total


def ntk_work(arch: Architecture, n1: int, n2: int, sym: bool = False) -> int:
    """Multiply-adds of the NTK contributions of all dense/conv layers (the cheaper route each),
    besides the forward and backward passes."""
    total = 0
    for node in arch.affine:
        if node.shape_out.positions == 1:
            total += _pairs(n1, n2, sym) * (node.affine.fan_in + node.affine.fan_out)
        else:
            total += min(route_costs(node, n1, n2, sym))
    return total
