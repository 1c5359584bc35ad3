"""Benchmark: infinite-width network kernel vs one ``x @ x.T`` of the same size and dtype.

Network: (Dense(w_std) → Relu) × 3 → Dense readout, b_std = 0.1, NTK and NNGP together,
``x`` = n × d standard normal (default 4000 × 784). For float32 and float64 it prints the
best-of-``--repeat`` time of ``x @ x.T``, of ``gram(spec, x)`` (the two are measured
alternately, so that load from other processes hits both alike) and their ratio, and the
peak extra memory in units of n² entries (the two outputs count 2), measured two ways:

- ``tracemalloc``: NumPy registers every array buffer with tracemalloc, so its peak is the
  NumPy-visible allocation high-water mark (numba's and BLAS's own buffers are not seen);
- ``rss``: the process resident-set high-water mark (``VmHWM`` in /proc/self/status, reset
  before each call through /proc/self/clear_refs), which sees every allocation that is
  touched. Reported only where the kernel lets the process reset it.

Run: ``.venv/bin/python bench/kernels.py [--n 4000] [--d 784] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.rss import hwm_reset, status  # noqa: E402
from core.kernels import Activation, Dense, Network, gram


def _best_alternating(first, second, repeat: int) -> tuple[float, float]:
    """Best times of ``first`` and ``second``, called alternately ``repeat`` times each.

    Each call starts after a 0.2 s pause so that neither pays for the other's thread pools
    still spinning (OpenBLAS workers spin for a while after a call).
    """
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in zip((first, second), times):
            time.sleep(0.2)
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return min(times[0]), min(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--w-std", type=float, default=2**0.5)
    args = parser.parse_args()
    n, d = args.n, args.d
    spec = Network(
        layers=(
            Dense(args.w_std, 0.1), Activation("relu"),
            Dense(args.w_std, 0.1), Activation("relu"),
            Dense(args.w_std, 0.1), Activation("relu"),
            Dense(args.w_std, 0.1),
        )
    )
    rng = np.random.default_rng(0)
    print(f"n={n} d={d}: depth-3 ReLU network, NTK + NNGP; best of {args.repeat}")
    print(f"{'dtype':8} {'x@x.T s':>9} {'kernel s':>9} {'ratio':>6} {'tracemalloc n²':>15} {'rss n²':>7}")
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((n, d)).astype(dtype)
        gram(spec, x[:64], dtype=dtype)  # compile / load the cached kernel
        x @ x.T  # warm BLAS threads
        t_mm, t_k = _best_alternating(
            lambda x=x: x @ x.T, lambda x=x, dtype=dtype: gram(spec, x, dtype=dtype), args.repeat
        )
        unit = n * n * np.dtype(dtype).itemsize
        tracemalloc.start()
        out = gram(spec, x, dtype=dtype)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del out
        rss = "n/a"
        if hwm_reset():
            base = status("VmRSS")
            out = gram(spec, x, dtype=dtype)
            rss = f"{(status('VmHWM') - base) / unit:.2f}"
            del out
        print(f"{np.dtype(dtype).name:8} {t_mm:9.3f} {t_k:9.3f} {t_k / t_mm:6.2f} {peak / unit:15.2f} {rss:>7}")


if __name__ == "__main__":
    main()
