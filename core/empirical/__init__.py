"""Finite-width networks and their exact empirical NTK / NNGP (pure numpy).

- :mod:`core.empirical.activations`: φ and φ' for every activation name.
- :mod:`core.empirical.layers`: the finite-width forward pass and VJP of every layer kind of
  the registry (``FINITE``: dense, conv, pooling, flatten, layer_norm, branches, activations)
  on NHWC arrays.
- :mod:`core.empirical.network`: architecture, parameters from a seed, forward pass, VJP,
  flatten/unflatten and norms (for gradient-descent training); inputs ``(n, d)``,
  ``(n, L, C)`` or ``(n, H, W, C)``.
- :mod:`core.empirical.ntk`: ``⟨∇θ f(x), ∇θ f(x')⟩`` without per-example Jacobians, and the
  size estimates the service uses to refuse too-large requests.
- :mod:`core.empirical.training`: the lazy-training experiment (a finite network trained by
  gradient descent next to the infinite-width NTK's prediction) and its cost estimates.
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
from core.empirical.training import (
    LazyTrainingResult,
    lazy_training,
    lazy_training_memory_entries,
    lazy_training_work,
)

__all__ = [
    "LazyTrainingResult",
    "Params",
    "add_scaled",
    "apply",
    "architecture",
    "empirical_kernels",
    "flatten",
    "gradients",
    "init_params",
    "kernels_from_params",
    "lazy_training",
    "lazy_training_memory_entries",
    "lazy_training_work",
    "parameter_count",
    "params_distance",
    "params_norm",
    "unflatten",
    "working_memory_entries",
]
