"""GPU worker check: the CuPy tile against NumPy, then a large Gram on the GPU.

    python bench/gpu_check.py [--n 50000] [--d 784] [--tile 8192]

Needs CuPy (``pip install -e .[gpu]``) and a CUDA GPU. Prints, for each kernel kind, the
largest relative difference between ``gram_block`` on CuPy arrays and on NumPy arrays (float32
and float64), then the time of a tiled depth-3 ReLU NTK Gram of ``n × d`` float32 on the GPU
(upper-triangle tiles, results copied back to host memory tile by tile, as a GPU worker does)
next to one GPU ``x @ x.T`` of the same data. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.kernels import RBF, Activation, Dense, Laplace, Network, Polynomial, TwoLayerRelu, gram_block  # noqa: E402
from core.tiling import plan_tiles  # noqa: E402

RELU3 = Network((Dense(1.4, 0.1), Activation("relu")) * 3 + (Dense(1.0, 0.1),))
SPECS = {
    "relu3": RELU3,
    "erf/gelu standard": Network((Dense(1.0, 0.1, width=512), Activation("erf"), Dense(1.2, 0.0, width=512),
                                  Activation("gelu"), Dense(1.0)), "standard"),
    "tanh (quadrature)": Network((Dense(1.0), Activation("tanh"), Dense(1.0, 0.2))),
    "two_layer_relu": TwoLayerRelu(),
    "polynomial": Polynomial(3, 1.0),
    "rbf": RBF(2.0),
    "laplace": Laplace(2.0),
}


def check_agreement(cp) -> bool:
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(300, 32)), rng.normal(size=(200, 32))
    ok = True
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        for name, spec in SPECS.items():
            cpu = gram_block(spec, x1, x2, dtype=dtype)
            gpu = gram_block(spec, cp.asarray(x1, dtype), cp.asarray(x2, dtype), dtype=dtype)
            worst = max(float(np.max(np.abs(cp.asnumpy(gpu[k]) - cpu[k])) / max(np.max(np.abs(cpu[k])), 1e-30))
                        for k in cpu)
            status = "ok" if worst <= tol else "MISMATCH"
            ok &= worst <= tol
            print(f"{np.dtype(dtype).name:8s} {name:20s} max rel diff {worst:.2e}  {status}")
    return ok


def time_large(cp, n: int, d: int, tile: int) -> None:
    x = cp.asarray(np.random.default_rng(1).normal(size=(n, d)), dtype=cp.float32)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    _ = x @ x.T
    cp.cuda.Device().synchronize()
    matmul = time.perf_counter() - t0
    del _
    out = np.empty((n, n), dtype=np.float32)
    gram_block(RELU3, x[:256], None, outputs=["ntk"], dtype=np.float32, symmetric=True)  # warm-up
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for t in plan_tiles(n, None, tile):
        (r0, r1), (c0, c1) = t.rows, t.cols
        block = gram_block(RELU3, x[r0:r1], None if t.diagonal else x[c0:c1], outputs=["ntk"], dtype=np.float32,
                           symmetric=t.diagonal)["ntk"]
        host = cp.asnumpy(block)
        out[r0:r1, c0:c1] = host
        if not t.diagonal:
            out[c0:c1, r0:r1] = host.T
    elapsed = time.perf_counter() - t0
    print(f"n={n} d={d} float32 depth-3 ReLU NTK on GPU, tiles of {tile}: {elapsed:.2f} s "
          f"(one GPU x@x.T: {matmul:.2f} s, ratio {elapsed / matmul:.1f}; includes copies to host)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--tile", type=int, default=8192)
    args = parser.parse_args()
    try:
        import cupy as cp
    except ImportError:
        print("CuPy is not installed: pip install -e .[gpu]")
        return 2
    print(f"GPU: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
    ok = check_agreement(cp)
    time_large(cp, args.n, args.d, args.tile)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
