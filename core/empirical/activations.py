"""Elementwise activations φ and their derivatives φ' for finite-width networks.

Every name of ``core.kernels.spec`` (closed-form and numerical) is here. Conventions:

- derivatives at kinks follow the "strict" rule: ``relu'(0) = 0``, ``leaky_relu'(0) = slope``,
  ``abs'(0) = 0``; ``sign' = 0`` everywhere (the distributional delta is ignored, as in
  autodiff frameworks and in the infinite-width ``E[φ'φ']`` of ``sign``, which is 0);
- ``sign(0) = 0``; ``gelu`` is the exact ``x·Φ(x)`` (Φ the standard normal CDF);
  ``swish(x) = x·sigmoid(x)``; ``softplus(x) = log(1 + eˣ)``;
- the output dtype is the input dtype (float32 stays float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

from core.kernels.quadrature import FUNCTIONS
from core.kernels.spec import Activation

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

#: name -> (φ, φ'), each ``(x, negative_slope) -> array`` of x's dtype.
_Fn = Callable[[np.ndarray, float], np.ndarray]


def _relu(x: np.ndarray, _: float) -> np.ndarray:
    return np.maximum(x, 0)


def _relu_d(x: np.ndarray, _: float) -> np.ndarray:
    return (x > 0).astype(x.dtype)


def _leaky(x: np.ndarray, s: float) -> np.ndarray:
    return np.where(x > 0, x, x * s)


def _leaky_d(x: np.ndarray, s: float) -> np.ndarray:
    return np.where(x > 0, x.dtype.type(1), x.dtype.type(s))


def _abs_d(x: np.ndarray, _: float) -> np.ndarray:
    return np.sign(x)


def _erf_d(x: np.ndarray, _: float) -> np.ndarray:
    return _TWO_OVER_SQRT_PI * np.exp(-(x * x))


def _sign_d(x: np.ndarray, _: float) -> np.ndarray:
    return np.zeros_like(x)


def _gelu(x: np.ndarray, _: float) -> np.ndarray:
    return x * special.ndtr(x)


def _gelu_d(x: np.ndarray, _: float) -> np.ndarray:
    return special.ndtr(x) + x * (_INV_SQRT_2PI * np.exp(-0.5 * x * x))


_TABLE: dict[str, tuple[_Fn, _Fn]] = {
    "relu": (_relu, _relu_d),
    "leaky_relu": (_leaky, _leaky_d),
    "abs": (lambda x, _: np.abs(x), _abs_d),
    "erf": (lambda x, _: special.erf(x), _erf_d),
    "sign": (lambda x, _: np.sign(x), _sign_d),
    "gelu": (_gelu, _gelu_d),
    "sin": (lambda x, _: np.sin(x), lambda x, _: np.cos(x)),
    "identity": (lambda x, _: x.copy(), lambda x, _: np.ones_like(x)),
    # the numerical activations: the same φ, φ' as their dual kernels (core.kernels.quadrature)
    **{name: (lambda x, _, f=f: f(x), lambda x, _, d=d: d(x)) for name, (f, d) in FUNCTIONS.items()},
}

#: Every activation name this module knows.
ACTIVATION_NAMES: tuple[str, ...] = tuple(_TABLE)


def _entry(act: Activation) -> tuple[_Fn, _Fn]:
    try:
        return _TABLE[act.name]
    except KeyError:
        raise ValueError(
            f"unknown activation {act.name!r}; expected one of {', '.join(_TABLE)}"
        ) from None


def check_activation(act: Activation) -> None:
    """Raise ``ValueError`` if ``act`` names no known activation."""
    _entry(act)


def phi(act: Activation, x: np.ndarray) -> np.ndarray:
    """φ(x) elementwise, in x's dtype."""
    return np.asarray(_entry(act)[0](x, act.negative_slope), dtype=x.dtype)


def dphi(act: Activation, x: np.ndarray) -> np.ndarray:
    """φ'(x) elementwise, in x's dtype (kink conventions in the module docstring)."""
    return np.asarray(_entry(act)[1](x, act.negative_slope), dtype=x.dtype)


def apply_chain(
    acts: Sequence[Activation], z: np.ndarray, *, derivative: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``acts`` in order to ``z``; with ``derivative``, also d(output)/dz elementwise.

    An empty chain is the identity (derivative 1). Returns ``(u, du)``, ``du`` None when
    not asked for.
    """
    u = z
    du: np.ndarray | None = None
    for act in acts:
        if derivative:
            d = dphi(act, u)
            du = d if du is None else du * d
        u = phi(act, u)
    if derivative and du is None:
        du = np.ones_like(z)
    return u, du
