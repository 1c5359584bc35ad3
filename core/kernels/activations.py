"""Closed-form dual activations: ``E[φ(u)φ(v)]`` and ``E[φ'(u)φ'(v)]`` for centred Gaussians.

Each rule is two small pure functions:

- ``aux(q, layer)``: per-point quantities derived from a variance ``q`` (``split_scale``
  parts ``m``, ``p``; ``u = 1/P``, ``t = q/P``, ``sP = sqrt(P)`` for a rule-specific
  ``P``; ...). They are elementwise, so the fused engine precomputes them in O(n).
- ``pair(a1, a2, q12, layer, want_dot)``: the new covariance and the derivative kernel
  ("dot") for broadcastable ``a1`` (rows), ``a2`` (columns) and cross covariance ``q12``.

``rules.activation_rule`` applies a rule to a kernel state (``nngp ← E[φ(u)φ(v)]``,
``ntk ← ntk·E[φ'(u)φ'(v)]``); a point with itself uses the *same* ``pair`` formula at
``q11 = q22 = q12 = q`` (``ActivationRule.diagonal``).
Conventions follow neural-tangents (``stax.ABRelu``, ``Erf``, ``Sign``, ``Gelu``, ``Sin``);
``sign`` has derivative kernel 0 (as neural-tangents). The formulas are rewritten so that no
intermediate overflows for variances up to ~1e300 and no difference of large numbers appears
under a square root (see each function).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.backend import array_namespace
from core.kernels.geometry import correlation, norm_product, scaled_pair, split_scale
from core.kernels.spec import Activation

Array = Any
Aux = dict[str, Array]
PairFn = Callable[[Aux, Aux, Array, Activation, bool], tuple[Array, Array | None]]

_INV_2PI = 1.0 / (2.0 * math.pi)


# ----------------------------------------------------------------------------- per-point parts
def scale_aux(q: Array, layer: Activation) -> Aux:
    """``m``, ``p``, ``ip = 1/p`` with ``q = m·p²`` (exact, scale-safe ``sqrt(q11 q22)``)."""
    m, p = split_scale(q)
    return {"m": m, "p": p, "ip": 1 / p}


def _rational_aux(q: Array, scale: float) -> Aux:
    """``P = 1 + scale·q``: ``u = 1/P``, ``t = scale·q/P`` (so ``u + t = 1``), ``sP = √P``."""
    xp = array_namespace(q)
    big_p = 1 + scale * q
    aux = scale_aux(q, None)  # type: ignore[arg-type]
    aux.update(u=1 / big_p, t=(scale * q) / big_p, sP=xp.sqrt(big_p))
    return aux


def erf_aux(q: Array, layer: Activation) -> Aux:
    """``P = 1 + 2q``."""
    return _rational_aux(q, 2.0)


def gelu_aux(q: Array, layer: Activation) -> Aux:
    """``P = 1 + q`` and ``g = q/√P``."""
    aux = _rational_aux(q, 1.0)
    aux["g"] = q / aux["sP"]
    return aux


def variance_aux(q: Array, layer: Activation) -> Aux:
    """Just ``q``."""
    return {"q": q}


def no_aux(q: Array, layer: Activation) -> Aux:
    """Nothing (identity)."""
    return {}


def relu_slopes(layer: Activation) -> tuple[float, float]:
    """``(a, b)`` of ``φ(x) = a·min(x, 0) + b·max(x, 0)`` for relu, leaky_relu and abs."""
    if layer.name == "relu":
        return 0.0, 1.0
    if layer.name == "leaky_relu":
        return float(layer.negative_slope), 1.0
    if layer.name == "abs":
        return -1.0, 1.0
    raise ValueError(f"{layer.name!r} is not a piecewise-linear activation")


def relu_constants(layer: Activation) -> tuple[float, float]:
    """``(factor, c0)``: ``factor = (a − b)²/2π``, ``c0 = (a² + b²)/2``; dot = c0 − factor·θ."""
    a, b = relu_slopes(layer)
    return (a - b) ** 2 * _INV_2PI, (a * a + b * b) / 2.0


# ------------------------------------------------------------------------------------- pairs
def relu_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """Arc-cosine kernel of ``a·min(x,0) + b·max(x,0)`` (Cho & Saul; neural-tangents ABRelu).

    ``nngp' = factor·√(q11 q22 − q12²) + dot·q12 = p1 p2 (factor·D̂ + dot·x̂)``,
    ``dot = c0 − factor·θ`` (scaled pair: ``geometry.scaled_pair``).
    """
    factor, c0 = relu_constants(layer)
    xh, dh, theta = scaled_pair(q12, a1["m"], a1["ip"], a2["m"], a2["ip"])
    dot = c0 - factor * theta
    return (a1["p"] * a2["p"]) * (factor * dh + dot * xh), dot


def erf_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """``(2/π) arcsin(2q12 / √(P1 P2))`` and ``(4/π) / √(P1 P2 − 4 q12²)``, ``P = 1 + 2q``.

    With ``r = 2 q12/√(P1 P2)`` the cosine ``c = √(1 − r²)`` is formed without cancellation as
    ``c² = u1u2 + t1u2 + u1t2 + t1t2 (1 − ρ²)`` (a sum of non-negative terms).
    """
    xp = array_namespace(q12)
    s12 = norm_product(a1["m"], a1["p"], a2["m"], a2["p"])
    rho = correlation(q12, s12)
    u1, t1, u2, t2 = a1["u"], a1["t"], a2["u"], a2["t"]
    c = xp.sqrt(u1 * u2 + t1 * u2 + u1 * t2 + t1 * t2 * ((1 - rho) * (1 + rho)))
    big_s = a1["sP"] * a2["sP"]
    r = 2 * q12 / big_s
    new = (2 / math.pi) * xp.arctan2(r, c)
    dot = (4 / math.pi) / (big_s * c) if want_dot else None
    return new, dot


def sign_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """``E[sign u sign v] = 1 − 2θ/π``, as ``sign(q12)(1 − 2θ'/π)`` with ``θ' ∈ [0, π/2]`` the
    angle of ``|q12|`` (odd, exactly 0 at ``q12 = 0``, exactly 1 for a point with itself);
    derivative kernel 0 (as neural-tangents)."""
    xp = array_namespace(q12)
    _, _, theta = scaled_pair(xp.abs(q12), a1["m"], a1["ip"], a2["m"], a2["ip"])
    new = xp.sign(q12) * (1 - (2 / math.pi) * theta)
    return new, (xp.zeros_like(new) if want_dot else None)


def gelu_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """Exact GELU ``x·Φ(x)`` (Tsuchida et al., arXiv:2002.08517; neural-tangents ``Gelu``).

    neural-tangents' ``δ² = (1+q11)(1+q22) − q12²`` is written ``δ = S·c`` with
    ``S = √P1 √P2`` (``P = 1 + q``) and ``c² = E + t1t2(1 − ρ²)``, ``E = u1u2 + t1u2 + u1t2``,
    ``r = q12/S``, angle ``arctan2(r, c)``:
    ``nngp' = (r²/(S c) + g1 g2 c + q12·angle)/2π + q12/4``,
    ``dot = (r/c)(u1u2/c² + u1u2 + E)/2π + 1/4 + angle/2π``.
    """
    xp = array_namespace(q12)
    s12 = norm_product(a1["m"], a1["p"], a2["m"], a2["p"])
    rho = correlation(q12, s12)
    u1, t1, u2, t2 = a1["u"], a1["t"], a2["u"], a2["t"]
    uu = u1 * u2
    e = uu + t1 * u2 + u1 * t2
    c2 = e + t1 * t2 * ((1 - rho) * (1 + rho))
    c = xp.sqrt(c2)
    big_s = a1["sP"] * a2["sP"]
    r = q12 / big_s
    angle = xp.arctan2(r, c)
    new = (r * r / (big_s * c) + a1["g"] * a2["g"] * c + q12 * angle) * _INV_2PI + q12 * 0.25
    dot = None
    if want_dot:
        dot = (r / c) * (uu / c2 + uu + e) * _INV_2PI + 0.25 + angle * _INV_2PI
    return new, dot


def sin_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """``E[sin u sin v] = e^{−h} sinh q12``, ``E[cos u cos v] = e^{−h} cosh q12``, ``h = (q11+q22)/2``.

    Written ``sign(q12)·e^{|q12|−h}(−expm1(−2|q12|))/2`` (exponent ≤ 0: no overflow, and
    ``expm1`` keeps small covariances accurate).
    """
    xp = array_namespace(q12)
    h = (a1["q"] + a2["q"]) * 0.5
    a = xp.abs(q12)
    e = xp.exp(a - h)
    new = xp.sign(q12) * e * (-xp.expm1(-2 * a)) * 0.5
    dot = e * (1 + xp.exp(-2 * a)) * 0.5 if want_dot else None
    return new, dot


def identity_pair(a1: Aux, a2: Aux, q12: Array, layer: Activation, want_dot: bool):
    """``φ(x) = x``: covariance unchanged, derivative kernel 1."""
    xp = array_namespace(q12)
    return q12, (xp.ones_like(q12) if want_dot else None)


# ---------------------------------------------------------------------------------- registry
@dataclass(frozen=True, slots=True)
class ActivationRule:
    """A closed-form activation: per-point ``aux`` and the ``pair`` formula."""

    aux: Callable[[Array, Activation], Aux]
    pair: PairFn

    def diagonal(self, q: Array, layer: Activation) -> Array:
        """``E[φ(u)²]`` for variances ``q``: the pair formula at ``q11 = q22 = q12 = q``."""
        a = self.aux(q, layer)
        return self.pair(a, a, q, layer, False)[0]


ACTIVATIONS: dict[str, ActivationRule] = {
    "relu": ActivationRule(scale_aux, relu_pair),
    "leaky_relu": ActivationRule(scale_aux, relu_pair),
    "abs": ActivationRule(scale_aux, relu_pair),
    "erf": ActivationRule(erf_aux, erf_pair),
    "sign": ActivationRule(scale_aux, sign_pair),
    "gelu": ActivationRule(gelu_aux, gelu_pair),
    "sin": ActivationRule(variance_aux, sin_pair),
    "identity": ActivationRule(no_aux, identity_pair),
}
