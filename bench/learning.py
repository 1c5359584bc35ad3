"""Benchmark: kernel regression and training dynamics against their irreducible factorizations.

Kernel: the NTK of (Dense(√2, 0.1) → Relu) × 3 → Dense readout from ``core.kernels.gram``
(falls back to a NumPy RBF kernel when ``core.kernels`` is not importable, and says so).
Data: ``x`` n × d and 1000 test points, standard normal; one output. Ratios, all measured in
this run (best of ``--repeat``, the two sides of a ratio timed alternately):

1. fit: (Gram + ``regression.fit``) ÷ (Gram + one Cholesky of K + ρI) — goal ≤ 1.3;
2. trajectory: ``dynamics.trajectory`` at 100 flow times with test predictions for the
   1000 test points (its own ``eigh`` included) ÷ one ``numpy.linalg.eigh`` of K — goal ≤ 1.5;
3. reuse: a second trajectory and a finite-time prediction on the same fitted model, with the
   number of factorizations (``eigh``, ``cho_factor``) they ran — goal 0.

Run: ``.venv/bin/python bench/learning.py [--n 4000] [--d 784] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import scipy.linalg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from core import dynamics, regression

CALLS: Counter[str] = Counter()


def _count(name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        CALLS[name] += 1
        return fn(*args, **kwargs)

    return wrapper


def kernel_function() -> tuple[str, Callable[[np.ndarray, np.ndarray | None], np.ndarray]]:
    try:
        from core.kernels import Activation, Dense, Network, gram
    except ImportError as exc:  # core.kernels is optional for this benchmark
        def rbf(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
            b = a if b is None else b
            sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
            return np.exp(-np.maximum(sq, 0.0) / (2.0 * a.shape[1]))

        return f"RBF kernel in NumPy (FALLBACK: core.kernels not importable: {exc})", rbf
    w = 2**0.5
    layers = []
    for _ in range(3):
        layers += [Dense(w, 0.1), Activation("relu")]
    spec = Network(layers=(*layers, Dense(w, 0.1)))
    gram(spec, np.ones((8, 4)))  # compile / load the fused engine
    return "depth-3 ReLU NTK (core.kernels.gram)", lambda a, b: gram(spec, a, b, outputs=["ntk"])["ntk"]


def best_alternating(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Best time of each callable, called in turn ``repeat`` times (0.2 s pause before each)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            time.sleep(0.2)
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return [min(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--times", type=int, default=100)
    parser.add_argument("--ridge", type=float, default=1e-4, help="relative ridge (trace K / n units)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d))
    xt = rng.standard_normal((args.n_test, args.d))
    y = np.tanh(x[:, 0] + 0.5 * x[:, 1])
    name, kernel = kernel_function()
    print(f"n={args.n} d={args.d} n_test={args.n_test}: {name}; best of {args.repeat}")

    k_train = kernel(x, None)
    k_test = kernel(xt, x)
    rho = regression.effective_ridge(k_train, args.ridge, "relative")

    def cholesky() -> None:
        a = k_train.copy()
        a.flat[:: args.n + 1] += rho
        scipy.linalg.cho_factor(a, lower=True, overwrite_a=True, check_finite=False)

    t_gram, t_chol, t_fit = best_alternating(
        [lambda: kernel(x, None), cholesky,
         lambda: regression.fit(k_train, y, ridge=args.ridge, ridge_mode="relative")],
        args.repeat,
    )
    print(f"1. fit: Gram {t_gram:.2f} s + fit {t_fit:.2f} s vs Gram + Cholesky {t_chol:.2f} s: "
          f"ratio {(t_gram + t_fit) / (t_gram + t_chol):.2f} (goal ≤ 1.3; fit ÷ Cholesky alone "
          f"{t_fit / t_chol:.2f})")

    times = [0.0, *np.logspace(-2, 4, args.times - 2).tolist(), None]
    t_eigh, t_traj = best_alternating(
        [lambda: np.linalg.eigh(k_train),
         lambda: dynamics.trajectory(k_train, y, times, ridge_effective=rho, kernel_test_train=k_test)],
        args.repeat,
    )
    print(f"2. trajectory ({len(times)} flow times, {args.n_test} test points): {t_traj:.2f} s vs "
          f"one eigh {t_eigh:.2f} s: ratio {t_traj / t_eigh:.2f} (goal ≤ 1.5)")

    np.linalg.eigh = _count("eigh", np.linalg.eigh)
    scipy.linalg.cho_factor = _count("cho_factor", scipy.linalg.cho_factor)
    model = regression.fit(k_train, y, ridge=args.ridge, ridge_mode="relative")
    t = time.perf_counter()
    first = dynamics.trajectory(k_train, y, times, ridge_effective=rho, kernel_test_train=k_test,
                                basis=model.basis)
    t_first = time.perf_counter() - t
    before = dict(CALLS)
    t = time.perf_counter()
    second = dynamics.trajectory(k_train, y, times, ridge_effective=rho, kernel_test_train=k_test,
                                 basis=model.basis)
    t_second = time.perf_counter() - t
    t = time.perf_counter()
    mean = regression.predict(model, k_test, time=10.0)
    t_predict = time.perf_counter() - t
    new = {k: CALLS[k] - before.get(k, 0) for k in ("eigh", "cho_factor")}
    assert np.allclose(first.test_predictions, second.test_predictions) and np.isfinite(mean).all()
    print(f"3. reuse: first trajectory on the fit (computes model.basis) {t_first:.2f} s; second "
          f"trajectory {t_second:.2f} s, prediction at t=10 {t_predict:.3f} s; factorizations "
          f"during the second calls: eigh {new['eigh']}, cho_factor {new['cho_factor']} "
          f"(whole section: eigh {CALLS['eigh']}, cho_factor {CALLS['cho_factor']})")


if __name__ == "__main__":
    main()
