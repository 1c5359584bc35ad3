"""Gram jobs end to end against a real API process (uvicorn) on its embedded Dask engine.

    python bench/jobs.py [--n 20000] [--d 784] [--small 4000] [--parts 4]

For each size: upload x (.npy), submit a gram job (depth-3 ReLU NTK, float32), poll until it
succeeds, download the result to a file with ``curl``; that is the end-to-end time. The finished
result is then downloaded again to ``/dev/null`` by ``curl`` (goal ≥ 1 GB/s on loopback), by
``httpx`` (one stream, to memory), and by ``--parts`` parallel ``curl`` range requests (to files,
checked to concatenate to the full download). The end-to-end time is also given with the
download to ``/dev/null`` (upload + job + that download: what the service costs, without the
client's disk). Both are divided by the same Gram computed in this process by
``core.kernels.gram`` (goal at n = 20 000: ≤ 1.2) and by one ``x @ x.T`` (goal at n = 4 000:
≤ 3). Prints the API process's peak RSS (VmHWM: the result never sits whole in its memory).
The engine is started (one tiny job) before timing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.kernels import Activation, Dense, Network, gram  # noqa: E402 — after the sys.path entry

LAYERS = [{"type": "dense", "w_std": 1.4, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense", "b_std": 0.1}]
SPEC = Network((Dense(1.4, 0.1), Activation("relu")) * 3 + (Dense(1.0, 0.1),))
MB = 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def curl(url: str, out: str = "/dev/null", byte_range: str | None = None) -> tuple[int, float]:
    """(bytes received, seconds) of one ``curl`` download, as curl measures it."""
    command = ["curl", "-s", "-f", "-o", out, "-w", "%{size_download} %{time_total}", url]
    if byte_range is not None:
        command[1:1] = ["-r", byte_range]
    size, seconds = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return int(size), float(seconds)


def httpx_download(url: str) -> tuple[int, float]:
    t0, size = time.perf_counter(), 0
    with httpx.Client(timeout=600) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        for chunk in response.iter_raw(4 << 20):
            size += len(chunk)
    return size, time.perf_counter() - t0


def parallel_curl(url: str, length: int, parts: int, folder: Path) -> tuple[int, float, str]:
    """Download ``url`` as ``parts`` concurrent ranges; (bytes, wall seconds, sha256 of the parts joined)."""
    bounds = [length * i // parts for i in range(parts + 1)]
    paths = [folder / f"part-{i}" for i in range(parts)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parts) as pool:
        sizes = list(pool.map(lambda i: curl(url, str(paths[i]), f"{bounds[i]}-{bounds[i + 1] - 1}")[0],
                              range(parts)))
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
        path.unlink()
    return sum(sizes), seconds, digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def end_to_end(base: str, x: np.ndarray, out: Path) -> tuple[float, float, str]:
    """Upload, job, download to ``out`` (curl); returns (seconds in all, seconds of the download,
    the result URL)."""
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=False)
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as client:
        dataset = client.post("/v1/datasets", content=buf.getvalue(), headers={"content-type": "application/x-npy"})
        t1 = time.perf_counter()
        job = client.post("/v1/jobs", json={"type": "gram", "kernel": {"type": "network", "layers": LAYERS},
                                            "x1": dataset.json()["id"], "outputs": ["ntk"], "dtype": "float32"}).json()
        while (status := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.02)
        assert status["status"] == "succeeded", status
    t2 = time.perf_counter()
    url = f"{base}/v1/jobs/{job['id']}/result"
    size, _ = curl(url, str(out))
    t3 = time.perf_counter()
    print(f"  phases: upload {t1 - t0:.2f} s, job {t2 - t1:.2f} s, download to file {t3 - t2:.2f} s "
          f"({size / MB / (t3 - t2):.0f} MB/s)")
    return t3 - t0, t3 - t2, url


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=4_000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--parts", type=int, default=4, help="parallel range requests in the ranged download")
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
                e2e, to_file, url = end_to_end(base, x, out)
                length = out.stat().st_size
                size, seconds = curl(url)
                print(f"  curl  → /dev/null: {size / MB:7.0f} MB in {seconds:5.2f} s = {size / MB / seconds:6.0f} MB/s")
                e2e_null = e2e - to_file + seconds
                size, seconds = httpx_download(url)
                print(f"  httpx → memory:    {size / MB:7.0f} MB in {seconds:5.2f} s = {size / MB / seconds:6.0f} MB/s")
                size, seconds, digest = parallel_curl(url, length, args.parts, Path(tmp))
                same = digest == sha256_file(out)
                print(f"  curl × {args.parts} ranges:    {size / MB:7.0f} MB in {seconds:5.2f} s = "
                      f"{size / MB / seconds:6.0f} MB/s (parts join to the full download: {same})")
                t0 = time.perf_counter()
                ref = gram(SPEC, x, outputs=["ntk"], dtype=np.float32)["ntk"]
                core_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                _ = x @ x.T
                matmul_s = time.perf_counter() - t0
                got = np.load(out, mmap_mode="r")
                rows = np.sort(rng.choice(n, size=min(n, 200), replace=False))
                err = float(np.max(np.abs(got[rows] - ref[rows])) / np.max(np.abs(ref)))
                del ref, got
                print(f"n={n:6d} d={args.d}: core gram {core_s:6.2f} s | x@x.T {matmul_s:5.2f} s | "
                      f"max rel. diff {err:.1e}")
                for what, seconds in (("to a file", e2e), ("to /dev/null", e2e_null)):
                    print(f"  end-to-end, download {what:12s} {seconds:7.2f} s: {seconds / core_s:5.2f} × core gram, "
                          f"{seconds / matmul_s:5.2f} × x@x.T")
                out.unlink()
            print(f"API process peak RSS: {peak_rss_mb(api.pid):.0f} MB")
        finally:
            api.terminate()
            api.wait(timeout=60)


if __name__ == "__main__":
    main()
