"""Finite-width networks and their exact empirical NTK / NNGP (pure numpy).

- :mod:`core.empirical.activations`: φ and φ' for every activation name.
- :mod:`core.empirical.network`: architecture, parameters from a seed, forward pass, VJP,
  flatten/unflatten and norms (for gradient-descent training).
- :mod:`core.empirical.ntk`: ``⟨∇θ f(x), ∇θ f(x')⟩`` without per-example Jacobians, and the
  size estimates the service uses to refuse too-large requests.
"""

from core.empirical.network import (
    Params,
    add_scaled,
    apply,
    architecture,
    flatten,
    gradients,
    init_params,
    parameter_count,
    params_distance,
    params_norm,
    unflatten,
)
from core.empirical.ntk import (
    empirical_kernels,
    kernels_from_params,
    working_memory_entries,
)

__all__ = [
    "Params",
    "add_scaled",
    "apply",
    "architecture",
    "empirical_kernels",
    "flatten",
    "gradients",
    "init_params",
    "kernels_from_params",
    "parameter_count",
    "params_distance",
    "params_norm",
    "unflatten",
    "working_memory_entries",
]
