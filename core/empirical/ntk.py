"""Exact empirical (finite-width) NTK and NNGP of one network drawn from ``(width, seed)``.

``K(x, x') = ⟨∇θ f(x), ∇θ f(x')⟩`` computed without per-example Jacobians: with ``U_{l−1}``
the input of dense stage ``l`` (after its activations) and ``Δ_l = ∂f/∂z_l`` the backward
signal at its output (one row per example),

    K = Σ_l w_mult_l² (Δ_l Δ_l'ᵀ) ∘ (U_{l−1} U_{l−1}'ᵀ) + b_mult_l² Δ_l Δ_l'ᵀ  [if stage l has a bias]

(``Δ_L = 1`` at the scalar readout). Outputs, named as the infinite-width kernels:

- ``Network``: ``"ntk"`` (the sum above) and ``"nngp"`` = ``(w_std²/fan_in) U_{L−1}U_{L−1}'ᵀ +
  b_std²`` of the readout, i.e. the output covariance over a fresh readout given the last
  hidden features. In NTK parameterization this is exactly the readout layer's parameter
  contribution to the NTK (readout weights + bias); in standard parameterization the readout
  contribution is ``U U'ᵀ + 1`` (which grows with the width), so the ``nngp`` uses the same
  prior-variance form there. Either way it converges to the infinite NNGP as width → ∞.
- ``TwoLayerRelu``: ``"ntk_a"`` (first-layer ``a`` part), ``"ntk_b"`` (readout ``b`` part),
  ``"ntk"`` = their sum and ``"nngp"`` = ``ntk_b``.

Cost. Networks with one hidden width (exactly two dense layers, e.g. ``[Dense, Relu, Dense]``
or ``two_layer_relu``) are processed in blocks of hidden units: time ``O(n1·n2·m + (n1+n2)·d·m)``
and memory ``O(m·d)`` for the parameters plus ``O((n1+n2)·chunk)``; widths up to 2^18 with a
few hundred points take seconds. Deeper networks hold their ``m×m`` hidden weights and
``n×m`` activations per layer (time ``O(n·m²)`` per layer), which bounds their width.
With ``x2=None`` the symmetric products use ``A Aᵀ`` (BLAS syrk) and the result is exactly symmetric.
"""

from __future__ import annotations

import numpy as np

from core.empirical.activations import apply_chain
from core.empirical.network import (
    DRAW_BLOCK,
    Architecture,
    EmpiricalSpec,
    Params,
    _float_dtype,
    architecture,
    as_inputs,
    backward,
    chunk_units,
    forward,
    init_params,
    parameter_count,
    two_layer_blocks,
)
from core.kernels.spec import TwoLayerRelu, resolve_outputs

__all__ = [
    "empirical_kernels",
    "kernels_from_params",
    "parameter_count",
    "working_memory_entries",
]


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

    The network depends on ``(spec, d, width, seed)`` only (not on the inputs), so calls with
    different ``x`` see the same network. Returns ``{name: (n1, n2) array of dtype}`` for the
    requested ``outputs`` (default: all of ``output_names(spec)``). Raises ``ValueError`` on an
    invalid spec, bad shapes, non-finite inputs or unknown output names.
    """
    dt = _float_dtype(dtype)
    chosen = resolve_outputs(spec, outputs)
    a = as_inputs(x1, dt, name="x1")
    b = None if x2 is None else as_inputs(x2, dt, a.shape[1], name="x2")
    architecture(spec, a.shape[1], width)  # validate before drawing
    params = init_params(spec, a.shape[1], width, seed, dt)
    return kernels_from_params(spec, params, a, b, outputs=chosen)


def kernels_from_params(
    spec: EmpiricalSpec,
    params: Params,
    x1: np.typing.ArrayLike,
    x2: np.typing.ArrayLike | None = None,
    *,
    outputs: list[str] | tuple[str, ...] | None = None,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """As :func:`empirical_kernels` for given parameters (e.g. a trained ``θ_t``), in their dtype.

    ``chunk`` overrides the number of hidden units per block in the two-layer path (testing).
    """
    chosen = resolve_outputs(spec, outputs)
    arch = architecture(spec, params.d, params.width)
    a = as_inputs(x1, params.dtype, params.d, name="x1")
    sym = x2 is None
    x = (
        a
        if sym
        else np.concatenate([a, as_inputs(x2, params.dtype, params.d, name="x2")])
    )
    n1 = a.shape[0]
    if isinstance(spec, TwoLayerRelu):
        need_hidden = any(o in ("ntk", "ntk_a") for o in chosen)
    else:
        need_hidden = "ntk" in chosen
    if len(arch.stages) == 2:
        gram, hidden = _two_stage(arch, params, x, n1, sym, need_hidden, chunk)
    else:
        gram, hidden = _deep(arch, params, x, n1, sym, need_hidden)
    last = arch.stages[-1]
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
            results[name] = (
                readout.copy() if "ntk_b" in results or "nngp" in results else readout
            )
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
    s1 = arch.stages[0]
    u0, _ = apply_chain(s1.acts, x)
    n2 = x.shape[0] if sym else x.shape[0] - n1
    gram = np.zeros((n1, n2), dtype=params.dtype)
    sdelta = np.zeros((n1, n2), dtype=params.dtype) if need_hidden else None
    for _, u1, delta in two_layer_blocks(
        arch, params, u0, delta=need_hidden, chunk=chunk
    ):
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


def _deep(
    arch: Architecture,
    params: Params,
    x: np.ndarray,
    n1: int,
    sym: bool,
    need_hidden: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Unchunked path for any depth: full activations and backward signals per stage."""
    us, dus, _ = forward(arch, params, x, derivative=need_hidden)
    gram = _cross(us[-1], n1, sym)
    if not need_hidden:
        return gram, None
    deltas = backward(arch, params, dus, x.shape[0])
    hidden = np.zeros_like(gram)
    for s, u, delta in zip(arch.stages[:-1], us[:-1], deltas[:-1]):
        sd = _cross(delta, n1, sym)
        hidden += (sd * _cross(u, n1, sym)) * s.w_mult**2
        if s.has_bias:
            hidden += sd * s.b_mult**2
    return gram, hidden


def working_memory_entries(
    spec: EmpiricalSpec, n1: int, n2: int, d: int, width: int
) -> int:
    """Estimated float entries held at peak by :func:`empirical_kernels` (multiply by the itemsize).

    Counts the parameters (plus the float64 draw buffer), the inputs, the
    per-block (two dense layers) or per-layer (deeper) activations and backward signals for
    ``n1 + n2`` rows, and the output matrices. Conservative for ``x2=None`` (pass ``n2 = n1``).
    Raises ``ValueError`` for an invalid spec.
    """
    arch = architecture(spec, d, width)
    rows = int(n1) + int(n2)
    params = parameter_count(spec, d, width)
    draw = 2 * min(
        DRAW_BLOCK, max(s.fan_in * s.fan_out for s in arch.stages)
    )  # float64 buffer
    inputs = 2 * rows * d
    outputs = 8 * int(n1) * int(n2)
    if len(arch.stages) == 2:
        activations = 6 * rows * chunk_units(rows, width)
    else:
        activations = 4 * rows * sum(s.fan_in + s.fan_out for s in arch.stages)
    return params + draw + inputs + activations + outputs
