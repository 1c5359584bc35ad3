"""Benchmark: convolutional, residual and layer-normalised kernels (issue 9's goals).

1. Myrtle-5 CNTK (conv 3×3 SAME + ReLU ×4 with 2×2, 2×2 and final average pooling, dense
   readout; NTK + NNGP, float32) on 16×16×3 images, n = 16: in-process and through
   ``POST /v1/kernels`` (the app in-process over ``httpx.ASGITransport``, JSON in and out),
   against neural-tangents' anchor measured on this kind of machine (3.8 s; goal ≥ 5× faster).
2. Myrtle-5 on 32×32×3 images for n = 16, 32, 64: time, the n² scaling ratio ``t(2n)/t(n)``
   (4 for pure n² cost) and the process's peak RSS (``VmHWM``, reset before each call where the
   kernel allows). Goal: n = 64 in ≤ 60 s with ≤ 2 GB.
3. Fully connected graphs on 4000 × 784 (float32, NTK + NNGP): a 4-block residual MLP and three
   dense + layer_norm + relu blocks, each ÷ one ``x @ x.T`` measured alternately in the same
   process (goal ≤ 2), beside the plain depth-3 chain of ``bench/kernels.py``.

Run: ``.venv/bin/python bench/architectures.py [--quick]`` (``--quick``: n = 16, 32 only at 32×32).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.rss import hwm_reset, status  # noqa: E402
from core.kernels import gram  # noqa: E402
from core.kernels import spec as S  # noqa: E402
from core.kernels.registry import layer_to_json  # noqa: E402

NT_MYRTLE_16 = {4: 0.25, 16: 3.8}  # neural-tangents 0.6.5, seconds (issue 9)
NT_FC = {"residual": 0.97, "layer_norm": 0.66}


def myrtle5() -> S.Network:
    conv = S.Conv((3, 3), None, "SAME", 2**0.5, 0.0)
    relu = S.Activation("relu")
    return S.Network((conv, relu, conv, relu, S.AvgPool((2, 2)), conv, relu, S.AvgPool((2, 2)), conv, relu,
                      S.GlobalAvgPool(), S.Flatten(), S.Dense(1.0)))


def residual_mlp() -> S.Network:
    block = S.Branches(((S.Activation("relu"), S.Dense(1.4, 0.1)), ()))
    return S.Network((S.Dense(1.4, 0.1), block, block, block, block, S.Activation("relu"), S.Dense(1.0)))


def layer_norm_mlp() -> S.Network:
    block = (S.Dense(1.4, 0.1), S.LayerNorm(), S.Activation("relu"))
    return S.Network(block * 3 + (S.Dense(1.0),))


def chain() -> S.Network:
    block = (S.Dense(1.4, 0.1), S.Activation("relu"))
    return S.Network(block * 3 + (S.Dense(1.4, 0.1),))


def timed(fn) -> tuple[float, float]:
    """(seconds, peak RSS in GB during the call; NaN where it cannot be reset)."""
    reset = hwm_reset()
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    return elapsed, (status("VmHWM") / 1e9 if reset else float("nan"))


async def through_http(spec: S.Network, x: np.ndarray, repeat: int = 3) -> float:
    """Best time of ``POST /v1/kernels`` (JSON in and out) once the app's start-up warm-up is done."""
    import httpx

    from service.app import create_app
    from service.settings import Settings

    app = create_app(Settings(data_dir="/tmp/ntk-bench-data", max_body_bytes=1 << 30))
    body = {"kernel": {"type": "network", "layers": [layer_to_json(layer) for layer in spec.layers]},
            "x1": x.tolist(), "outputs": ["nngp", "ntk"], "dtype": "float32"}
    best = float("inf")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
            for _ in range(100):  # the engine warms up in the background at start-up
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
            await client.post("/v1/kernels", json=body | {"x1": x[:2].tolist()})
            for _ in range(repeat):
                start = time.perf_counter()
                response = await client.post("/v1/kernels", json=body)
                best = min(best, time.perf_counter() - start)
                response.raise_for_status()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    spec = myrtle5()
    gram(spec, rng.standard_normal((2, 8, 8, 3)).astype(np.float32), dtype=np.float32)  # compile / load caches

    print("Myrtle-5, 16×16×3, NTK + NNGP, float32")
    for n in (4, 16):
        x = rng.standard_normal((n, 16, 16, 3)).astype(np.float32)
        best = min(timed(lambda x=x: gram(spec, x, dtype=np.float32))[0] for _ in range(3))
        print(f"  n={n:3d} in-process {best:7.3f} s   neural-tangents {NT_MYRTLE_16[n]:5.2f} s   "
              f"speed-up {NT_MYRTLE_16[n] / best:5.1f}×")
    x = rng.standard_normal((16, 16, 16, 3)).astype(np.float32)
    http = asyncio.run(through_http(spec, x))
    print(f"  n= 16 POST /v1/kernels {http:7.3f} s   speed-up {NT_MYRTLE_16[16] / http:5.1f}×")

    print("Myrtle-5, 32×32×3, NTK + NNGP, float32")
    previous = None
    for n in ((16, 32) if args.quick else (16, 32, 64)):
        x = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
        seconds, peak = timed(lambda x=x: gram(spec, x, dtype=np.float32))
        ratio = "" if previous is None else f"   t(n)/t(n/2) {seconds / previous:4.2f}"
        print(f"  n={n:3d} {seconds:7.2f} s   peak RSS {peak:5.2f} GB{ratio}")
        previous = seconds

    print("Fully connected graphs, 4000 × 784, NTK + NNGP, float32 (÷ one x @ x.T, alternating, best of 3)")
    x = rng.standard_normal((4000, 784)).astype(np.float32)
    for name, net in (("chain (bench/kernels.py)", chain()), ("residual", residual_mlp()),
                      ("layer_norm", layer_norm_mlp())):
        gram(net, x[:64], dtype=np.float32)
        t_mm, t_k = [], []
        for _ in range(3):
            time.sleep(0.2)
            t_mm.append(timed(lambda: x @ x.T)[0])
            time.sleep(0.2)
            t_k.append(timed(lambda net=net: gram(net, x, dtype=np.float32))[0])
        anchor = f"   neural-tangents {NT_FC[name]:.2f} s" if name in NT_FC else ""
        print(f"  {name:26} x@x.T {min(t_mm):6.3f} s   kernel {min(t_k):6.3f} s   ratio {min(t_k) / min(t_mm):5.2f}"
              f"{anchor}")


if __name__ == "__main__":
    main()
