"""Independent Monte Carlo references for the infinite-width kernel tests (NumPy only).

Nothing here imports ``core.kernels`` beyond the spec dataclasses: the finite networks are
sampled and differentiated by hand so that they check the recursion, not restate it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf, ndtr

from core.kernels.spec import Activation, Dense, Network

_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def activation_functions(layer: Activation):
    """(φ, φ') of an activation as NumPy functions (φ' of sign is 0: the convention)."""
    s = layer.negative_slope
    table = {
        "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
        "leaky_relu": (lambda x: np.where(x > 0, x, s * x), lambda x: np.where(x > 0, 1.0, s)),
        "abs": (np.abs, np.sign),
        "erf": (erf, lambda x: 2.0 / np.sqrt(np.pi) * np.exp(-x * x)),
        "sign": (np.sign, np.zeros_like),
        "gelu": (lambda x: x * ndtr(x), lambda x: ndtr(x) + x * _INV_SQRT_2PI * np.exp(-x * x / 2)),
        "sin": (np.sin, np.cos),
        "identity": (lambda x: x, np.ones_like),
        "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
        "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
        "softplus": (lambda x: np.logaddexp(0, x), lambda x: 1 / (1 + np.exp(-x))),
        "swish": (
            lambda x: x / (1 + np.exp(-x)),
            lambda x: 1 / (1 + np.exp(-x)) + x * np.exp(-x) / (1 + np.exp(-x)) ** 2,
        ),
    }
    return table[layer.name]


def gaussian_pair_samples(q11: float, q22: float, q12: float, n: int, rng: np.random.Generator):
    """``n`` samples of a centred Gaussian pair with the given (co)variances."""
    cov = np.array([[q11, q12], [q12, q22]])
    z = rng.multivariate_normal(np.zeros(2), cov, size=n, method="eigh")
    return z[:, 0], z[:, 1]


def mean_and_se(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error."""
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(samples.size))


def finite_network_kernels(
    spec: Network, x: np.ndarray, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Empirical (nngp, ntk) of ONE random finite network with a scalar output.

    Hidden dense layers get ``width`` units (or the spec's ``width`` under standard
    parameterization); the last dense layer has 1 unit. ``nngp`` is the covariance of the
    output given the last hidden layer (``w²<a, a'>/n_in + b²``); ``ntk`` is
    ``Σ_θ ∂f(x)/∂θ ∂f(x')/∂θ``, by an explicit backward pass.
    """
    ntk_param = spec.parameterization == "ntk"
    dense_idx = [i for i, layer in enumerate(spec.layers) if isinstance(layer, Dense)]
    a = x
    tape = []
    nngp = None
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, Dense):
            n_in = a.shape[1]
            n_out = 1 if i == dense_idx[-1] else (width if ntk_param else layer.width)
            w_raw = rng.standard_normal((n_out, n_in))
            b_raw = rng.standard_normal(n_out) if layer.b_std is not None else np.zeros(n_out)
            b = 0.0 if layer.b_std is None else layer.b_std
            scale = layer.w_std / np.sqrt(n_in)
            if i == dense_idx[-1]:
                nngp = layer.w_std**2 * (a @ a.T) / n_in + b**2
            tape.append(("dense", a, w_raw, scale, layer))
            a = scale * (a @ w_raw.T) + b * b_raw
        else:
            phi, dphi = activation_functions(layer)
            tape.append(("act", a, dphi))
            a = phi(a)
    delta = np.ones((x.shape[0], 1))
    ntk = np.zeros((x.shape[0], x.shape[0]))
    for entry in reversed(tape):
        if entry[0] == "dense":
            _, a_in, w_raw, scale, layer = entry
            dd = delta @ delta.T
            if ntk_param:
                ntk += scale**2 * dd * (a_in @ a_in.T)
                if layer.b_std is not None:
                    ntk += layer.b_std**2 * dd
            else:
                ntk += dd * (a_in @ a_in.T)
                if layer.b_std is not None:
                    ntk += dd
            delta = scale * (delta @ w_raw)
        else:
            _, h, dphi = entry
            delta = delta * dphi(h)
    return nngp, ntk


def finite_network_average(
    spec: Network, x: np.ndarray, width: int, repeats: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard error of (nngp, ntk) over ``repeats`` independent networks."""
    rng = np.random.default_rng(seed)
    samples = [finite_network_kernels(spec, x, width, rng) for _ in range(repeats)]
    nngp = np.stack([s[0] for s in samples])
    ntk = np.stack([s[1] for s in samples])
    se = lambda v: v.std(axis=0, ddof=1) / np.sqrt(repeats)
    return nngp.mean(0), se(nngp), ntk.mean(0), se(ntk)
