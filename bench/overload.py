"""Overload: many clients each sending one large synchronous kernel request, against a real uvicorn.

    python bench/overload.py [--clients 50] [--n 3000] [--d 784] [--baseline 3]

Starts ``python -m service serve`` with the default settings on a free loopback port (traffic
only to 127.0.0.1) and waits for the kernel engine to compile. The request: ``POST /v1/kernels``,
a depth-3 ReLU network, NTK + NNGP of ``n × d`` inputs (n = 3000, d = 784: a 46 MB JSON body,
a 339 MB JSON answer). First a single-client baseline (one warm-up request, then ``--baseline``
requests one at a time), then ``--clients`` concurrent clients each sending the request once
(overall timeout 120 s) while ``/healthz`` is probed every 50 ms on its own connection, from a
process of its own.

Prints per-status counts, each client's time to its answer (status line) and to its last byte,
/healthz p50/p99/max, the server's peak RSS (VmHWM; and API + helper processes, sampled every
0.1 s), and the throughput of 200s under load against the single-client baseline. Goals (issue 11):
RSS ≤ 4 GB, /healthz p99 ≤ 100 ms, every client a 200 or 503 within 60 s, throughput of 200s
within 20 % of one client at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rss import status as proc_status  # noqa: E402

RELU3 = [{"type": "dense", "w_std": 1.41, "b_std": 0.1}, {"type": "relu"}] * 3 + [{"type": "dense"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, data_dir: str, overrides: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NTK_")}  # the default settings
    env |= {"NTK_DATA_DIR": data_dir, "NTK_LOG_LEVEL": "WARNING"} | overrides
    proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)], cwd=ROOT, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
            if ready.status_code == 200 and "compiling" not in ready.text:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


class Sampler(threading.Thread):
    """Every 0.1 s: RSS of the server and of the server plus its child processes."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak_api = 0
        self.peak_total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                api = self.proc.memory_info().rss
                children = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_api = max(self.peak_api, api)
            self.peak_total = max(self.peak_total, api + children)
            self.stop.wait(0.1)


PROBE = """
import sys, time, httpx
base, out = sys.argv[1], sys.argv[2]
latencies = []
with httpx.Client(base_url=base, timeout=10) as client:
    while True:
        started = time.perf_counter()
        try:
            ok = client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - started if ok else -1.0)
        with open(out, "w") as f:
            f.write(" ".join(map(str, latencies)))
        time.sleep(max(0.0, 0.05 - (time.perf_counter() - started)))
"""


class HealthProbe:
    """GET /healthz every 50 ms on its own connection, from a process of its own (so that the
    clients' work in this process does not add to the latencies); a failure counts as 10 s."""

    def __init__(self, base: str, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, base, str(out)])
        self.latencies: list[float] = []
        self.failures = 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        values = [float(v) for v in self.out.read_text().split()] if self.out.exists() else []
        self.failures = sum(v < 0 for v in values)
        self.latencies = [10.0 if v < 0 else v for v in values]


#: Transport errors seen by the clients, by exception type (status 0 in the counts).
ERRORS: dict[str, int] = {}


async def one(client: httpx.AsyncClient, body: bytes, t0: float) -> tuple[int, float, float, int]:
    """(status, seconds to the status line, seconds to the last byte, body bytes); status 0 on error."""
    try:
        async with client.stream("POST", "/v1/kernels", content=body,
                                 headers={"content-type": "application/json"}) as response:
            answered = time.perf_counter() - t0
            size = 0
            async for chunk in response.aiter_raw():
                size += len(chunk)
            return response.status_code, answered, time.perf_counter() - t0, size
    except httpx.HTTPError as exc:
        ERRORS[type(exc).__name__] = ERRORS.get(type(exc).__name__, 0) + 1
        return 0, time.perf_counter() - t0, time.perf_counter() - t0, 0


async def run_clients(base: str, body: bytes, clients: int, timeout: float) -> list[tuple[int, float, float, int]]:
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one(client, body, t0)) for _ in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        return [t.result() if t in done else (0, timeout, timeout, 0) for t in tasks]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--d", type=int, default=784)
    parser.add_argument("--baseline", type=int, default=3, help="single-client requests after one warm-up")
    parser.add_argument("--set", action="append", default=[], metavar="NTK_X=VALUE",
                        help="a setting other than its default (repeatable)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)

    x = np.random.default_rng(0).normal(size=(args.n, args.d))
    body = orjson.dumps({"kernel": {"type": "network", "layers": RELU3}, "x1": x, "outputs": ["ntk", "nngp"]},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    print(f"request: n = {args.n}, d = {args.d}, depth-3 ReLU NTK + NNGP, body {len(body) / 1e6:.1f} MB; "
          f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB, "
          f"load average {os.getloadavg()[0]:.2f} before the run; settings: {overrides or 'defaults'}")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data_dir:
        proc = start_server(port, data_dir, overrides)
        try:
            # single client, one request at a time
            single = [asyncio.run(run_clients(base, body, 1, 120))[0] for _ in range(1 + args.baseline)]
            warm, rest = single[0], single[1:]
            assert all(s == 200 for s, *_ in single), single
            answer_mb = rest[0][3] / 1e6
            one_at_a_time = sum(t for _, _, t, _ in rest) / len(rest)
            print(f"single client: warm-up {warm[2]:.2f} s, then {', '.join(f'{t:.2f}' for _, _, t, _ in rest)} s "
                  f"per request (answer {answer_mb:.0f} MB) → {1 / one_at_a_time:.3f} requests/s")

            sampler = Sampler(proc.pid)
            probe = HealthProbe(base, Path(data_dir) / "healthz.txt")
            sampler.start()
            time.sleep(1.0)
            started = time.perf_counter()
            results = asyncio.run(run_clients(base, body, args.clients, 120))
            wall = time.perf_counter() - started
            time.sleep(0.5)
            probe.stop()
            sampler.stop.set()
            sampler.join()
            hwm = psutil.Process(proc.pid).memory_full_info()
            vm_hwm = proc_status("VmHWM", proc.pid) if Path("/proc").exists() else 0
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    counts: dict[int, int] = {}
    for status, *_ in results:
        counts[status] = counts.get(status, 0) + 1
    ok = [r for r in results if r[0] == 200]
    answered = [a for _, a, _, _ in results]
    finished = [f for _, _, f, _ in results]
    print(f"\n{args.clients} concurrent clients, one request each: statuses {dict(sorted(counts.items()))} "
          f"in {wall:.1f} s")
    if ERRORS:
        print(f"  client transport errors: {ERRORS}")
    print(f"  time to the status line: max {max(answered):.2f} s (200s: max {max((r[1] for r in ok), default=0):.2f} s; "
          f"503s: max {max((r[1] for r in results if r[0] == 503), default=0):.2f} s)")
    print(f"  time to the last byte:   max {max(finished):.2f} s; 200s "
          f"{', '.join(f'{r[2]:.1f}' for r in sorted(ok, key=lambda r: r[2]))} s")
    print(f"  complete 200 answers: {sum(r[3] == rest[0][3] for r in ok)} of {len(ok)}")
    lat = probe.latencies
    print(f"  /healthz: {len(lat)} probes, p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
          f"max {max(lat) * 1000:.1f} ms, failures {probe.failures}")
    print(f"  API RSS: peak {vm_hwm / 2**30:.2f} GiB (VmHWM, whole life incl. baseline), sampled peak "
          f"{sampler.peak_api / 2**30:.2f} GiB; API + helper processes sampled peak {sampler.peak_total / 2**30:.2f} GiB"
          f" (RSS now {hwm.rss / 2**30:.2f} GiB)")
    if ok:
        span = max(r[2] for r in ok)
        throughput = len(ok) / span
        print(f"  throughput of 200s: {len(ok)} in {span:.1f} s = {throughput:.3f}/s vs one at a time "
              f"{1 / one_at_a_time:.3f}/s → ratio {throughput * one_at_a_time:.2f}")
    within = all(r[0] in (200, 503) and r[1] <= 60 for r in results)
    print("\ngoals: RSS ≤ 4 GB: {}; /healthz p99 ≤ 100 ms: {}; every client 200/503 within 60 s: {}; "
          "throughput within 20 %: {}".format(
              "met" if vm_hwm <= 4e9 else "NOT met", "met" if pct(lat, 99) <= 0.1 else "NOT met",
              "met" if within else "NOT met",
              "met" if ok and len(ok) / max(r[2] for r in ok) * one_at_a_time >= 0.8 else "NOT met"))


if __name__ == "__main__":
    main()
