"""The network recursion, layer by layer (the vectorised reference path).

A ``Network`` starts from ``nngp = <x, x'>/d``, ``cov = ‖x‖²/d``, ``ntk = 0`` and applies its
layers in order: ``Dense`` (``dense.py``), closed-form activations (``activations.py``) and
quadrature activations (``quadrature.py``). This module works on whole blocks with NumPy or
CuPy; ``fused.py`` runs the same recursion entry by entry in one compiled pass and is checked
against this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from core.kernels.activations import ACTIVATIONS, apply_activation
from core.kernels.dense import apply_dense, dense_constants, require_fan_in
from core.kernels.quadrature import FUNCTIONS, apply_numerical, pair_diagonal
from core.kernels.spec import Activation, Dense, Layer, Network, Parameterization
from core.kernels.state import KernelState, input_state

Array = Any


def is_numerical(layer: Layer) -> bool:
    """True for activations computed by quadrature."""
    return isinstance(layer, Activation) and layer.name in FUNCTIONS


def apply_layer(
    state: KernelState, layer: Layer, parameterization: Parameterization = "ntk", position: int = 0
) -> KernelState:
    """One layer of the recursion (pure: ``state`` is not modified)."""
    if isinstance(layer, Dense):
        return apply_dense(state, layer, parameterization, position)
    if is_numerical(layer):
        return apply_numerical(state, layer)
    return apply_activation(state, layer)


def network_reference(
    spec: Network,
    x1: Array,
    x2: Array | None = None,
    *,
    track_ntk: bool = True,
    input_scale: float | None = None,
) -> KernelState:
    """The final state of ``spec`` on ``x1`` against ``x2`` (``None``: against ``x1``).

    ``input_scale`` replaces the divisor ``d`` of the input covariance.
    """
    state = input_state(x1, x2, track_ntk=track_ntk, scale=input_scale)
    for position, layer in enumerate(spec.layers):
        state = apply_layer(state, layer, spec.parameterization, position)
    return state


def diagonal_step(
    cov: Array,
    ntk: Array | None,
    width: int | None,
    layer: Layer,
    parameterization: Parameterization,
    position: int,
) -> tuple[Array, Array | None, int | None]:
    """One layer applied to the diagonal only: ``(cov, ntk_diag, width)`` after ``layer``.

    Uses the same formulas as the full recursion at ``q11 = q22 = q12 = cov``.
    """
    if isinstance(layer, Dense):
        w2, b2, bias = dense_constants(layer)
        new = w2 * cov + b2
        if ntk is not None:
            if parameterization == "ntk":
                ntk = new + w2 * ntk
            else:
                ntk = require_fan_in(width, position) * cov + w2 * ntk + bias
        return new, ntk, layer.width
    if is_numerical(layer):
        phi, dphi = FUNCTIONS[layer.name]
        new, dot = pair_diagonal(phi, dphi if ntk is not None else None, cov)
    else:
        rule = ACTIVATIONS[layer.name]
        a = rule.aux(cov, layer)
        new, dot = rule.pair(a, a, cov, layer, ntk is not None)
    return new, (None if ntk is None else ntk * dot), width


def diagonal_chain(
    spec: Network, cov: Array, ntk: Array | None, width: int
) -> Iterator[tuple[Layer, Array, Array | None, int | None]]:
    """``(layer, cov, ntk_diag, width)`` *before* each layer, then ``(None, ...)`` at the end."""
    for position, layer in enumerate(spec.layers):
        yield layer, cov, ntk, width
        cov, ntk, width = diagonal_step(cov, ntk, width, layer, spec.parameterization, position)
    yield None, cov, ntk, width  # type: ignore[misc]
