"""Benchmark: quadrature activations (tanh, sigmoid, softplus, swish), Hermite series vs 2-D rule.

Network: Dense(w_std, b_std) → φ → Dense(w_std, b_std) → φ → Dense(w_std, b_std), NTK and NNGP
together, ``x`` = n × d standard normal (default 1500 × 64), float64. For each activation it
prints the best-of-``--repeat`` time of ``x @ x.T`` and of ``gram(spec, x)`` (measured
alternately, so that load from other processes hits both alike), their ratio, and

- ``before``: the same Gram by the previous method (``quadrature.ORDERS = ()``: every entry by
  the 2-D Gauss–Hermite rule), timed once (it is slow: ~2 minutes per activation and layer at
  the default size), the speed-up, and the largest difference of the two results;
- ``cold``: the first call in the process (builds the Hermite rules and level bounds and loads
  the compiled loop from numba's disk cache).

The memo of ``quadrature`` (recently expanded row blocks) is cleared before every timed call,
so repeated calls do not reuse each other's work.

Run: ``.venv/bin/python bench/quadrature.py [--n 1500] [--d 64] [--acts tanh,sigmoid,softplus]
[--no-before]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from core.kernels import Activation, Dense, Network, gram, quadrature


def _timed(fn) -> float:
    quadrature._MEMO.clear()
    time.sleep(0.2)  # let other thread pools (OpenBLAS, numba) go idle
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--w-std", type=float, default=1.0)
    parser.add_argument("--b-std", type=float, default=0.1)
    parser.add_argument("--acts", default="tanh,sigmoid,softplus")
    parser.add_argument("--no-before", action="store_true", help="skip the (slow) 2-D rule run")
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((args.n, args.d))
    print(f"n = {args.n}, d = {args.d}, Dense({args.w_std}, {args.b_std}) → φ → ×2 → Dense, float64")
    for name in args.acts.split(","):
        dense = Dense(args.w_std, args.b_std)
        spec = Network((dense, Activation(name), dense, Activation(name), dense))
        run = partial(gram, spec, x)
        cold = _timed(run)
        best_mm, best = np.inf, np.inf
        for _ in range(args.repeat):
            best_mm = min(best_mm, _timed(lambda: x @ x.T))
            best = min(best, _timed(run))
        print(f"{name:9s} x@x.T {best_mm * 1e3:7.2f} ms   gram {best:7.3f} s   ratio {best / best_mm:8.0f}   cold {cold:6.2f} s")
        if args.no_before:
            continue
        after = run()
        saved = quadrature.ORDERS
        quadrature.ORDERS = ()
        try:
            result: dict = {}
            before = _timed(lambda res=result, fn=run: res.update(fn()))
        finally:
            quadrature.ORDERS = saved
        diff = max(float(np.abs(after[k] - result[k]).max()) for k in after)
        print(
            f"{'':9s} before (2-D rule) {before:8.1f} s   ratio {before / best_mm:8.0f}   "
            f"speed-up {before / best:6.1f}×   max |after − before| {diff:.1e}"
        )


if __name__ == "__main__":
    main()
