"""Timing and peak memory of core.empirical.empirical_kernels (prints, asserts nothing).

    .venv/bin/python -m bench.empirical [--n 300] [--d 10] [--log2-width 18]

Reports wall time per spec/dtype, the traced peak of numpy allocations, and the service's
``working_memory_entries`` estimate (times the itemsize) beside it.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from core.empirical import empirical_kernels, working_memory_entries
from core.kernels.spec import Activation, Dense, Network, TwoLayerRelu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--log2-width", type=int, default=18)
    ap.add_argument("--deep-log2-width", type=int, default=11)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.n, args.d))
    m, m_deep = 2**args.log2_width, 2**args.deep_log2_width
    cases = [
        ("two_layer_relu", TwoLayerRelu(), m),
        (
            "[Dense, Relu, Dense]",
            Network((Dense(1.0, 0.1), Activation("relu"), Dense(1.0, 0.1))),
            m,
        ),
        (
            "[Dense, Erf, Dense] standard",
            Network((Dense(1.0, 0.1), Activation("erf"), Dense(1.0)), "standard"),
            m,
        ),
        (
            "[Dense, Relu]x2 + Dense",
            Network(
                (Dense(), Activation("relu"), Dense(), Activation("relu"), Dense())
            ),
            m_deep,
        ),
    ]
    print(f"n={args.n} d={args.d}")
    for label, spec, width in cases:
        for dtype in (np.float64, np.float32):
            tracemalloc.start()
            t0 = time.perf_counter()
            empirical_kernels(spec, x, width=width, seed=0, dtype=dtype)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            est = (
                working_memory_entries(spec, args.n, args.n, args.d, width)
                * np.dtype(dtype).itemsize
            )
            print(
                f"{label:32s} width=2^{int(np.log2(width)):<3d} {np.dtype(dtype).name:8s} "
                f"{dt:7.2f} s   peak {peak / 2**20:8.1f} MiB   estimate {est / 2**20:8.1f} MiB"
            )


if __name__ == "__main__":
    main()
