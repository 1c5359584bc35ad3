"""Gram jobs end to end against a real API process on its embedded Dask engine.

    python bench/jobs.py [--n 20000] [--d 784] [--small 4000]

For each size: upload x (.npy), submit a gram job (depth-3 ReLU NTK, float32), poll until it
succeeds, stream the result to disk, and compare with the same Gram computed in this process
by ``core.kernels.gram`` (ratio goal ≤ 1.5 at n = 20 000). The small size is also divided by
one ``x @ x.T`` (goal ≤ 3). Prints the API process's peak RSS (VmHWM; goal ≤ 1 GB: the result
never sits whole in its memory). The engine is started (one tiny job) before timing.
"""

from __future__ import annotations

import argparse
import io
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
sys.path.insert(0, str(ROOT))

from core.kernels import Activation, Dense, Network, gram  # noqa: E402

LAYERS = [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense", "b_std": 0.1}]
SPEC = Network((Dense(1.4, 0.1), Activation("relu")) * 3 + (Dense(1.0, 0.1),))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def end_to_end(base: str, x: np.ndarray, out: Path) -> float:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as client:
        dataset = client.post("/v1/datasets", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        t1 = time.perf_counter()
        job = client.post("/v1/jobs", json={"type": "gram", "kernel": {"type": "network", "layers": LAYERS},
                                            "x1": dataset.json()["id"], "outputs": ["ntk"], "dtype": "float32"}).json()
        while (status := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.05)
        assert status["status"] == "succeeded", status
        t2 = time.perf_counter()
        with client.stream("GET", f"/v1/jobs/{job['id']}/result") as response, open(out, "wb") as f:
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
    t3 = time.perf_counter()
    print(f"  phases: upload {t1 - t0:.2f} s, job {t2 - t1:.2f} s, download {t3 - t2:.2f} s")
    return t3 - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--d", type=int, default=784)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "NTK_DATA_DIR": tmp, "NTK_LOG_LEVEL": "WARNING"}
        api = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)], cwd=ROOT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/readyz", timeout=60).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            rng = np.random.default_rng(0)
            end_to_end(base, rng.normal(size=(64, args.d)).astype(np.float32), Path(tmp) / "warm.npy")  # engine up
            for n in (args.small, args.n):
                x = rng.normal(size=(n, args.d)).astype(np.float32)
                out = Path(tmp) / f"result-{n}.npy"
                e2e = end_to_end(base, x, out)
                t0 = time.perf_counter()
                ref = gram(SPEC, x, outputs=["ntk"], dtype=np.float32)["ntk"]
                core_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                _ = x @ x.T
                matmul_s = time.perf_counter() - t0
                got = np.load(out, mmap_mode="r")
                rows = rng.choice(n, size=min(n, 200), replace=False)
                err = float(np.max(np.abs(got[np.sort(rows)] - ref[np.sort(rows)])) / np.max(np.abs(ref)))
                del ref
                print(f"n={n:6d} d={args.d}: end-to-end {e2e:7.2f} s | core gram {core_s:6.2f} s "
                      f"(ratio {e2e / core_s:.2f}) | x@x.T {matmul_s:5.2f} s (ratio {e2e / matmul_s:.2f}) "
                      f"| max rel. diff {err:.1e}")
                out.unlink()
            print(f"API process peak RSS: {peak_rss_mb(api.pid):.0f} MB")
        finally:
            api.terminate()
            api.wait(timeout=60)


if __name__ == "__main__":
    main()
