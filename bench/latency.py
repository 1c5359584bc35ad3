"""HTTP latency and throughput against a real uvicorn process.

    python bench/latency.py [--requests 400] [--concurrency 16]

Starts ``python -m service serve`` on a free loopback port, then drives it with
``--concurrency`` clients: ``GET /healthz`` and a small ``POST /v1/kernels`` (n = 32,
d = 8, a depth-3 ReLU network, NTK + NNGP). Prints p50/p99 latency and throughput side by
side, and the kernel request's cost as a ratio of the health check measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NTK_DATA_DIR": data_dir, "NTK_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


async def drive(base: str, method: str, path: str, body: dict | None, total: int, concurrency: int) -> dict:
    latencies: list[float] = []
    remaining = total

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            response = await client.request(method, path, json=body)
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        await client.request(method, path, json=body)  # warm-up (JIT compilation, caches)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "rps": len(ms) / wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(32, 8)).round(6).tolist()
    layers = [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense"}]
    kernel_body = {"kernel": {"type": "network", "layers": layers}, "x1": x, "outputs": ["ntk", "nngp"]}
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc = start_server(port, data_dir)
        try:
            base = f"http://127.0.0.1:{port}"
            health = asyncio.run(drive(base, "GET", "/healthz", None, args.requests, args.concurrency))
            kernels = asyncio.run(drive(base, "POST", "/v1/kernels", kernel_body, args.requests, args.concurrency))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.requests} requests, {args.concurrency} concurrent clients, one uvicorn process")
    print(f"{'':18}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, r in (("GET /healthz", health), ("POST /v1/kernels", kernels)):
        print(f"{name:18}{r['p50']:10.2f}{r['p99']:10.2f}{r['rps']:10.1f}")
    print(f"ratio kernels/healthz: p50 {kernels['p50'] / health['p50']:.2f}x, "
          f"throughput {health['rps'] / kernels['rps']:.2f}x lower")


if __name__ == "__main__":
    main()
