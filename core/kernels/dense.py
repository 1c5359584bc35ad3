"""Fully connected layer: the affine map of the kernel recursion.

NTK parameterization (neural-tangents ``stax.Dense``, Jacot et al. 2018)::

    nngp' = w²·nngp + b²            (b = 0 when b_std is None)
    ntk'  = nngp' + w²·ntk

Standard parameterization (Sohl-Dickstein et al. 2020), with the *pre-layer* nngp::

    nngp' = w²·nngp + b²
    ntk'  = fan_in·nngp + w²·ntk + (1 if the layer has a bias, even with b_std = 0)

``fan_in`` is ``state.width``: ``d`` for the first dense layer, then the previous dense
layer's ``width``. The diagonals follow the nngp rule.
"""

from __future__ import annotations

from core.kernels.spec import Dense, Parameterization
from core.kernels.state import KernelState


def dense_constants(layer: Dense) -> tuple[float, float, float]:
    """``(w², b², bias)``: ``bias`` = 1.0 if the layer has a bias parameter else 0.0."""
    b_std = layer.b_std
    return (
        float(layer.w_std) ** 2,
        0.0 if b_std is None else float(b_std) ** 2,
        0.0 if b_std is None else 1.0,
    )


def require_fan_in(width: int | None, position: int) -> int:
    """``width`` as the fan-in of the dense layer at ``position``, or a clear ``ValueError``."""
    if width is None:
        raise ValueError(
            f"standard parameterization needs the width of the dense layer before layer "
            f"{position} (its fan-in): set `width` on every dense layer but the last"
        )
    return int(width)


def apply_dense(
    state: KernelState,
    layer: Dense,
    parameterization: Parameterization = "ntk",
    position: int = 0,
) -> KernelState:
    """The state after ``layer`` (``position`` only labels error messages)."""
    w2, b2, bias = dense_constants(layer)
    nngp = w2 * state.nngp + b2
    ntk = state.ntk
    if ntk is not None:
        if parameterization == "ntk":
            ntk = nngp + w2 * ntk
        elif parameterization == "standard":
            fan_in = require_fan_in(state.width, position)
            ntk = fan_in * state.nngp + w2 * ntk + bias
        else:
            raise ValueError(f"unknown parameterization {parameterization!r}")
    return state.replace(
        cov1=w2 * state.cov1 + b2,
        cov2=w2 * state.cov2 + b2,
        nngp=nngp,
        ntk=ntk,
        width=layer.width,
    )
