"""Kernel matrices shared by the tests of core.solvers (built once per process, read-only)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import numpy as np
from threadpoolctl import threadpool_limits

from core.kernels import RBF, Activation, Dense, Network, gram

#: Depth-3 ReLU network (three hidden layers), the NTK of the issue's benchmarks.
RELU3 = Network(
    (Dense(1.5, 0.1), Activation("relu"), Dense(1.5, 0.1), Activation("relu"), Dense(1.5, 0.1),
     Activation("relu"), Dense(1.0, 0.1))
)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


@cache
def kernel_problem(name: str, n: int, d: int, n_test: int = 0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(K, K(x*, X), x, x*)`` for ``name`` ∈ {"ntk" (depth-3 ReLU NTK), "rbf" (RBF, lengthscale 1.5)}
    on standard normal inputs in d dimensions. Small d gives an ill-conditioned NTK (d = 2:
    condition number ~10⁶ at n = 400; d = 8: ~4·10³)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n + n_test, d))
    spec = RELU3 if name == "ntk" else RBF(1.5)
    out = "ntk" if name == "ntk" else "kernel"
    g = gram(spec, x, outputs=[out])[out]
    return tuple(_frozen(a) for a in (g[:n, :n], g[n:, :n], x[:n], x[n:]))


def single_blas_thread() -> Iterator[None]:
    """Fixture body: one BLAS thread for these small (n ≤ 600) problems. On the shared 2-core
    machine threaded BLAS oversubscribes: the three solver test files took 58 s with it, 7 s without."""
    with threadpool_limits(limits=1):
        yield
