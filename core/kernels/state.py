"""The recursion state of an infinite-width network kernel (neural-tangents style).

At every layer the kernel of inputs ``x1`` (n1 rows) against ``x2`` (n2 rows) is described by

- ``cov1`` (n1,), ``cov2`` (n2,): the variances ``E[h(x)²]`` of the current
  pre-/post-activation for each row of ``x1`` / ``x2`` (the diagonals);
- ``nngp`` (n1, n2): the covariances ``E[h(x) h(x')]``;
- ``ntk`` (n1, n2) or ``None`` when the NTK is not tracked;
- ``width``: the width of the current representation (``d`` at the input, then the
  ``width`` of the last dense layer, possibly ``None``): the fan-in of the next dense
  layer under standard parameterization.

A network starts from ``nngp = <x, x'>/d``, ``cov = ‖x‖²/d`` and ``ntk = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from core.backend import array_namespace

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True, slots=True)
class KernelState:
    """Diagonals, cross covariances and NTK of one layer of the recursion."""

    cov1: Array
    cov2: Array
    nngp: Array
    ntk: Array | None
    width: int | None

    def replace(self, **changes: Any) -> KernelState:
        """A copy with ``changes`` applied (states are immutable)."""
        return replace(self, **changes)


def row_sq_norms(x: Array) -> Array:
    """``‖x_i‖²`` for each row, in ``x``'s dtype."""
    xp = array_namespace(x)
    return xp.einsum("ij,ij->i", x, x)


def input_state(
    x1: Array, x2: Array | None, *, track_ntk: bool = True, scale: float | None = None
) -> KernelState:
    """The state before the first layer: ``nngp = <x, x'>/d``, ``ntk = 0``.

    ``scale`` replaces the divisor ``d`` (``two_layer_relu`` uses 1).
    With ``x2 is None`` (a symmetric block) the norms are the diagonal of the same product,
    so that each point, and each copy of it, has correlation exactly 1 with it.
    """
    xp = array_namespace(x1)
    d = x1.shape[1] if scale is None else scale
    if x2 is None:
        nngp = x1 @ x1.T
        n1 = n2 = xp.diagonal(nngp).copy()
    else:
        n1 = row_sq_norms(x1)
        n2 = row_sq_norms(x2)
        nngp = x1 @ x2.T
    nngp /= d
    ntk = xp.zeros_like(nngp) if track_ntk else None
    return KernelState(cov1=n1 / d, cov2=n2 / d, nngp=nngp, ntk=ntk, width=x1.shape[1])
