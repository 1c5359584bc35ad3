"""Kernel specifications as plain dicts: the classic kernels, and any spec as the contract's JSON.

Every client method takes a stax network (:mod:`ntk_client.stax`) or one of these dicts::

    kernels.rbf(lengthscale=0.5)        # {"type": "rbf", "lengthscale": 0.5}
    kernels.polynomial(degree=2, c=1)   # (c + ⟨x, x'⟩)^degree
    kernels.two_layer_relu()            # the lecture's f(x) = m^{-1/2} Σ b_i relu(a_iᵀx), m → ∞
"""

from __future__ import annotations

import math
from typing import Any

from ntk_client.stax import Layer

#: The matrices each kernel type yields, in the contract's order (the first is the default).
OUTPUTS: dict[str, tuple[str, ...]] = {
    "network": ("nngp", "ntk"),
    "two_layer_relu": ("ntk", "ntk_a", "ntk_b", "nngp"),
    "linear": ("kernel",),
    "polynomial": ("kernel",),
    "rbf": ("kernel",),
    "laplace": ("kernel",),
}


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def linear() -> dict[str, Any]:
    """⟨x, x'⟩."""
    return {"type": "linear"}


def polynomial(degree: int, c: float = 1.0) -> dict[str, Any]:
    """(c + ⟨x, x'⟩)^degree, ``degree ≥ 1``, ``c ≥ 0``."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be an integer >= 1, got {degree!r}")
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
        raise ValueError(f"c must be a finite number >= 0, got {c!r}")
    return {"type": "polynomial", "degree": degree, "c": float(c)}


def rbf(lengthscale: float) -> dict[str, Any]:
    """exp(−‖x − x'‖² / (2 lengthscale²))."""
    return {"type": "rbf", "lengthscale": _positive("lengthscale", lengthscale)}


def laplace(lengthscale: float) -> dict[str, Any]:
    """exp(−‖x − x'‖ / lengthscale)."""
    return {"type": "laplace", "lengthscale": _positive("lengthscale", lengthscale)}


def two_layer_relu() -> dict[str, Any]:
    """The lecture's two-layer ReLU network at infinite width: ``ntk = ntk_a + ntk_b``, ``nngp = ntk_b``."""
    return {"type": "two_layer_relu"}


def to_json(spec: Layer | dict[str, Any]) -> dict[str, Any]:
    """The contract's ``kernel`` object of a stax layer/network or a kernel dict."""
    if isinstance(spec, Layer):
        return spec.to_json()
    if isinstance(spec, dict) and isinstance(spec.get("type"), str):
        return spec
    raise TypeError(f"a kernel is a stax network (ntk_client.stax.serial(...)) or a dict with a 'type', got {spec!r}")


def outputs_of(kernel: dict[str, Any]) -> tuple[str, ...]:
    """The matrices ``kernel`` yields (its first one is the default ``which``)."""
    try:
        return OUTPUTS[kernel["type"]]
    except KeyError:
        raise ValueError(f"unknown kernel type {kernel.get('type')!r}; one of {sorted(OUTPUTS)}") from None


#: Layer kinds with spatial axes: a network with one is convolutional (costly per Gram entry).
SPATIAL_LAYERS = frozenset({"conv", "avg_pool", "sum_pool", "global_avg_pool", "global_sum_pool", "flatten"})


def fully_connected(kernel: dict[str, Any]) -> bool:
    """Whether each Gram entry of ``kernel`` is cheap: a classic kernel or a network without spatial layers."""
    def spatial(layers: list[dict[str, Any]]) -> bool:
        return any(layer["type"] in SPATIAL_LAYERS or any(spatial(b) for b in layer.get("branches", []))
                   for layer in layers)

    return kernel["type"] != "network" or not spatial(kernel["layers"])
