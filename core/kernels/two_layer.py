"""The lecture's two-layer ReLU network ``f(x) = m^{-1/2} Σ_i b_i relu(a_iᵀx)`` as m → ∞.

``a_i ~ N(0, I_d)``, ``b_i ~ N(0, 1)``, no biases, **no 1/d**. With ``θ`` the angle between
``x`` and ``x'`` (π/2 when either is zero)::

    ntk_a = <x, x'> (π − θ) / 2π                       (gradient w.r.t. the a_i)
    ntk_b = nngp = ‖x‖‖x'‖ ((π − θ) cos θ + sin θ) / 2π  (gradient w.r.t. the b_i)
    ntk   = ntk_a + ntk_b

i.e. ``ntk_a = <x,x'>·k0/2`` and ``nngp = k1/2`` with Cho & Saul's arc-cosine kernels of
order 0 and 1. It is the network recursion of ``[Dense(1), Relu]`` started from ``<x, x'>``
instead of ``<x, x'>/d`` (nngp → nngp, ntk → ntk_a), which is how ``gram`` computes it
(fused engine). Relation to the NTK-parameterised network ``N = [Dense(1), Relu, Dense(1)]``:
both kernels are positively homogeneous of degree 2 in the inputs, so
``two_layer(x) = N(√d·x) = d·N(x)``, i.e. ``N(x) = two_layer(x/√d)``.
"""

from __future__ import annotations

from typing import Any

from core.backend import array_namespace
from core.kernels.activations import relu_pair, scale_aux
from core.kernels.spec import Activation, Dense, Network

Array = Any

#: The recursion that yields (nngp, ntk_a) when started from ``<x, x'>`` (input scale 1).
TWO_LAYER_NETWORK = Network(layers=(Dense(w_std=1.0), Activation("relu")))


def two_layer_reference(x1: Array, x2: Array | None = None) -> dict[str, Array]:
    """All four matrices by the closed form, vectorised (reference / CuPy path)."""
    xp = array_namespace(x1)
    if x2 is None:
        g = x1 @ x1.T
        n1 = n2 = xp.diagonal(g).copy()
    else:
        g = x1 @ x2.T
        n1 = xp.einsum("ij,ij->i", x1, x1)
        n2 = xp.einsum("ij,ij->i", x2, x2)
    relu = Activation("relu")
    a1 = {k: v[:, None] for k, v in scale_aux(n1, relu).items()}
    a2 = {k: v[None, :] for k, v in scale_aux(n2, relu).items()}
    nngp, dot = relu_pair(a1, a2, g, relu, True)  # dot = (π − θ)/2π
    ntk_a = g * dot
    return {"ntk": ntk_a + nngp, "ntk_a": ntk_a, "ntk_b": nngp.copy(), "nngp": nngp}
