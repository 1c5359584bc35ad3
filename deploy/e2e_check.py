#!/usr/bin/env python3
"""End-to-end check of the container deployment (opt-in: it needs a Docker daemon with compose v2,
builds an image and runs containers for a few minutes).

    .venv/bin/python deploy/e2e_check.py [--base-image IMAGE] [--keep-image] [--keep-going]
    NTK_DOCKER_E2E=1 .venv/bin/python -m pytest tests/integration/test_containers_e2e.py -s   # the same

It runs docker-compose.yml as a user would, under its own compose project name, its own image tag
(NTK_IMAGE, default ntk-service-e2e:<project>) and a free host port (NTK_PUBLISHED_PORT), so it
leaves an existing stack alone; NTK_BASE_IMAGE (or --base-image) picks the base image. Checks:

  build     `docker compose build` builds the CPU image once, without VOLUME, no dangling image
  cache     numba's cache compiled into the image loads in a container as uid 10001 (no compile)
  up        api, scheduler and worker healthy; /readyz counts 1 worker, and answers promptly
  curl      the README's first request: 200 with 3x3 ntk and nngp
  job       a Gram job on an uploaded .npy runs on the worker container and equals the synchronous answer
  scale     --scale worker=2: /readyz counts 2, a second job's tiles land on both workers, equal again
  loop      no "Event loop was unresponsive" in the workers' logs
  down      `down -v` leaves no container, network or volume (named or anonymous) of the project,
            and the check leaves no dangling image; the image is removed unless --keep-image

Prints one line per check and a summary; exit status 0 only when every check passed. Only the
standard library and NumPy are needed on the host.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The README's first request (Quick start).
README_KERNEL = {"type": "network", "layers": [
    {"type": "dense", "w_std": 1.41, "b_std": 0.1}, {"type": "relu"},
    {"type": "dense", "w_std": 1.41, "b_std": 0.1}, {"type": "relu"},
    {"type": "dense", "w_std": 1.0}]}
SECOND_KERNEL = {"type": "network", "layers": [{"type": "dense"}, {"type": "relu"}, {"type": "dense"}]}
ROWS, FEATURES = 600, 16  # with 1 MiB tiles: 128-row tiles, 15 tasks per job (both workers get some)


class CheckFailed(Exception):
    pass


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.project = args.project or f"ntk-e2e-{os.getpid()}"
        self.image = os.environ.get("NTK_IMAGE") or f"ntk-service-e2e:{self.project}"
        self.port = int(os.environ.get("NTK_PUBLISHED_PORT") or free_port())
        self.keep_image, self.keep_going = args.keep_image, args.keep_going
        self.env = dict(os.environ, NTK_IMAGE=self.image, NTK_PUBLISHED_PORT=str(self.port),
                        NTK_API_KEYS="", NTK_JOB_TILE_BYTES=str(1024**2))
        if args.base_image:
            self.env["NTK_BASE_IMAGE"] = args.base_image
        self.base = f"http://127.0.0.1:{self.port}"
        self.results: list[tuple[str, bool, str, float]] = []
        self.image_existed = False
        self.volumes_before: set[str] = set()
        self.dangling_before: set[str] = set()

    # ---- helpers ----

    def sh(self, *cmd: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise CheckFailed(f"`{' '.join(cmd)}` exited {result.returncode}: {(result.stderr or result.stdout)[-2000:]}")
        return result

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.sh("docker", "compose", "--progress", "plain", "-p", self.project, "-f", str(COMPOSE_FILE),
                       *args, timeout=timeout, check=check)

    def http(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
             accept: str | None = None, timeout: float = 60) -> tuple[int, bytes, float]:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if accept:
            request.add_header("Accept", accept)
        start = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read(), time.monotonic() - start
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), time.monotonic() - start

    def json(self, method: str, path: str, payload: Any = None, expect: int = 200) -> Any:
        status, data, _ = self.http(method, path, None if payload is None else json.dumps(payload).encode(),
                                    "application/json" if payload is not None else None)
        if status != expect:
            raise CheckFailed(f"{method} {path}: {status} (expected {expect}): {data[:500]!r}")
        return json.loads(data)

    def step(self, name: str, fn: Any) -> bool:
        start = time.monotonic()
        try:
            detail = fn() or ""
            ok = True
        except (CheckFailed, AssertionError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}", False
        elapsed = time.monotonic() - start
        self.results.append((name, ok, detail, elapsed))
        print(f"[{'PASS' if ok else 'FAIL'}] {name:<6} {elapsed:6.1f} s  {detail}", flush=True)
        return ok

    def volumes(self) -> set[str]:
        return set(self.sh("docker", "volume", "ls", "-q").stdout.split())

    def dangling(self) -> set[str]:
        return set(self.sh("docker", "images", "-q", "--no-trunc", "--filter", "dangling=true").stdout.split())

    def readyz_workers(self) -> int:
        status, data, _ = self.http("GET", "/readyz", timeout=40)
        if status != 200:
            return -1
        match = re.search(r"ok \((\d+) Dask workers\)", json.loads(data)["checks"].get("engine", ""))
        return int(match.group(1)) if match else -1

    def wait_for_workers(self, n: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while (count := self.readyz_workers()) != n:
            if time.monotonic() > deadline:
                raise CheckFailed(f"/readyz counts {count} workers after {timeout:.0f} s, expected {n}")
            time.sleep(1)

    def worker_ips(self) -> set[str]:
        ids = self.compose("ps", "-q", "worker").stdout.split()
        out = self.sh("docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", *ids)
        return set(out.stdout.split())

    def run_job(self, dataset: str, kernel: dict[str, Any], x: np.ndarray) -> tuple[set[str], float]:
        """A Gram job (ntk and nngp) compared with the synchronous answer; returns the hosts that
        computed its tiles (from the done-markers the tasks leave in the job folder)."""
        job = self.json("POST", "/v1/jobs", {"type": "gram", "kernel": kernel, "x1": dataset,
                                             "outputs": ["ntk", "nngp"], "dtype": "float64"}, expect=202)
        deadline = time.monotonic() + 300
        while (job := self.json("GET", f"/v1/jobs/{job['id']}"))["status"] not in {"succeeded", "failed", "cancelled"}:
            if time.monotonic() > deadline:
                raise CheckFailed(f"job {job['id']} still {job['status']} after 300 s")
            time.sleep(0.5)
        if job["status"] != "succeeded":
            raise CheckFailed(f"job {job['id']} {job['status']}: {job.get('error')}")
        worst = 0.0
        for output in ("ntk", "nngp"):
            status, data, _ = self.http("GET", f"/v1/jobs/{job['id']}/result?output={output}")
            assert status == 200, f"result {output}: {status} {data[:300]!r}"
            result = np.load(io.BytesIO(data), allow_pickle=False)
            status, data, _ = self.http("POST", "/v1/kernels", json.dumps(
                {"kernel": kernel, "x1": x.tolist(), "outputs": [output]}).encode(), "application/json",
                accept="application/x-npy")
            assert status == 200, f"synchronous {output}: {status} {data[:300]!r}"
            expected = np.load(io.BytesIO(data), allow_pickle=False)
            assert result.shape == expected.shape == (len(x), len(x)), (result.shape, expected.shape)
            worst = max(worst, float(np.max(np.abs(result - expected)) / max(1.0, float(np.max(np.abs(expected))))))
        assert worst <= 1e-10, f"job result differs from the synchronous answer by {worst:.3g} (relative)"
        markers = self.compose("exec", "-T", "api", "python", "-c",
                               "import pathlib, sys; print(' '.join(p.read_text() for p in "
                               f"pathlib.Path('/data/jobs/{job['id']}/done').iterdir()))").stdout.split()
        hosts = {m.removeprefix("tcp://").rsplit(":", 1)[0] for m in markers}
        return hosts, worst

    # ---- the checks ----

    def preflight(self) -> str:
        server = self.sh("docker", "version", "--format", "{{.Server.Version}}").stdout.strip()
        version = self.sh("docker", "compose", "version", "--short").stdout.strip()
        if not re.match(r"v?2\.", version):
            raise CheckFailed(f"docker compose v2 is needed, found {version!r}")
        self.image_existed = self.sh("docker", "image", "inspect", self.image, check=False).returncode == 0
        self.volumes_before, self.dangling_before = self.volumes(), self.dangling()
        base = self.env.get("NTK_BASE_IMAGE", "the Dockerfile's default")
        return f"docker {server}, compose {version}, project {self.project}, image {self.image}, port {self.port}, base {base}"

    def build(self) -> str:
        result = self.compose("build", timeout=1800)
        output = result.stdout + result.stderr
        problems = []
        exports = len(set(re.findall(r"writing image (sha256:[0-9a-f]+)", output)))
        if exports != 1:
            problems.append(f"`docker compose build` built and exported {exports} images")
        inspect = json.loads(self.sh("docker", "image", "inspect", self.image).stdout)[0]
        if inspect["Config"].get("Volumes"):
            problems.append(f"the image declares VOLUME {sorted(inspect['Config']['Volumes'])}")
        if new_dangling := self.dangling() - self.dangling_before:
            problems.append(f"the build left {len(new_dangling)} dangling images")
        assert not problems, "; ".join(problems)
        venv = self.sh("docker", "run", "--rm", "--entrypoint", "du", self.image, "-sm", "/opt/venv").stdout.split()[0]
        return f"built once, no VOLUME, image {inspect['Size'] / 1e6:.0f} MB, venv {venv} MB"

    def cache(self) -> str:
        result = self.sh("docker", "run", "--rm", "-e", "NUMBA_DEBUG_CACHE=1", self.image, "python", "-c",
                         "import os, time; t = time.perf_counter(); from core.kernels import warm_up; warm_up(); "
                         "print('uid', os.getuid(), 'seconds', round(time.perf_counter() - t, 2))")
        out = result.stdout + result.stderr
        loaded, saved = out.count("[cache] data loaded"), out.count("[cache] data saved")
        assert "uid 10001" in out, out[-500:]
        assert loaded >= 2 and saved == 0, f"numba cache: {loaded} loaded, {saved} compiled and saved"
        return f"{loaded} compiled functions loaded from the image's cache, none compiled ({out.split()[-1]} s)"

    def up(self) -> str:
        start = time.monotonic()
        self.compose("up", "-d", "--wait", "--wait-timeout", "300", timeout=400)
        healthy = time.monotonic() - start
        status, _, first = self.http("GET", "/readyz", timeout=40)
        assert status == 200, f"first /readyz: {status}"
        assert first < 4.0, f"the first /readyz took {first:.1f} s (the health checks' timeout is 4 s)"
        self.wait_for_workers(1)
        return f"healthy after {healthy:.0f} s, first /readyz {first:.2f} s, 1 worker"

    def curl(self) -> str:
        body = self.json("POST", "/v1/kernels", {"kernel": README_KERNEL, "x1": [[1, 0], [0, 1], [1, 1]],
                                                 "outputs": ["ntk", "nngp"]})
        for name in ("ntk", "nngp"):
            matrix = np.array(body["results"][name])
            assert matrix.shape == (3, 3) and np.isfinite(matrix).all() and np.allclose(matrix, matrix.T), name
        return f"200, ntk[0][0]={body['results']['ntk'][0][0]:.6f}, nngp[0][0]={body['results']['nngp'][0][0]:.6f}"

    def job(self) -> str:
        self.x = np.random.default_rng(0).standard_normal((ROWS, FEATURES))
        buffer = io.BytesIO()
        np.save(buffer, self.x, allow_pickle=False)
        status, data, _ = self.http("POST", "/v1/datasets?name=e2e", buffer.getvalue(), "application/x-npy")
        assert status == 201, f"upload: {status} {data[:300]!r}"
        self.dataset = json.loads(data)["id"]
        hosts, worst = self.run_job(self.dataset, README_KERNEL, self.x)
        workers = self.worker_ips()
        assert hosts and hosts <= workers, f"tiles computed by {hosts}, the worker container is {workers}"
        return f"{ROWS}x{ROWS} ntk+nngp on the worker container {sorted(hosts)}, max rel. diff to sync {worst:.1e}"

    def scale(self) -> str:
        self.compose("up", "-d", "--wait", "--wait-timeout", "300", "--scale", "worker=2", timeout=400)
        self.wait_for_workers(2)
        workers = self.worker_ips()
        hosts, worst = self.run_job(self.dataset, SECOND_KERNEL, self.x)
        assert hosts <= workers and len(hosts) == 2, f"tiles computed by {sorted(hosts)}, workers {sorted(workers)}"
        return f"/readyz counts 2 workers; tiles on both {sorted(hosts)}, max rel. diff to sync {worst:.1e}"

    def loop(self) -> str:
        logs = self.compose("logs", "--no-color", "worker").stdout
        blocked = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line) for line in logs.splitlines()
                   if "Event loop was unresponsive" in line]
        assert not blocked, blocked[0]
        return f"{len(logs.splitlines())} worker log lines, no blocked event loop"

    def down(self) -> str:
        self.compose("down", "-v", "--remove-orphans", timeout=300)
        label = f"label=com.docker.compose.project={self.project}"
        left = {kind: self.sh("docker", kind, "ls", "-q", "--filter", label).stdout.split()
                for kind in ("container", "network", "volume")}
        left["container"] = self.sh("docker", "ps", "-aq", "--filter", label).stdout.split()
        new_volumes = self.volumes() - self.volumes_before
        removed = ""
        exists = self.sh("docker", "image", "inspect", self.image, check=False).returncode == 0
        if exists and not self.image_existed and not self.keep_image:
            self.sh("docker", "image", "rm", self.image)
            removed = ", test image removed"
        new_dangling = self.dangling() - self.dangling_before
        assert not any(left.values()), f"left behind: {left}"
        assert not new_volumes, f"new volumes left behind (anonymous?): {sorted(new_volumes)}"
        assert not new_dangling, f"{len(new_dangling)} new dangling images"
        return f"no container, network or volume left, no new dangling image{removed}"

    def run(self) -> int:
        if self.step("setup", self.preflight):
            try:
                for name, fn in (("build", self.build), ("cache", self.cache), ("up", self.up), ("curl", self.curl),
                                 ("job", self.job), ("scale", self.scale), ("loop", self.loop)):
                    if not self.step(name, fn) and not self.keep_going:
                        break
            finally:
                if not all(ok for _, ok, _, _ in self.results):
                    logs = self.compose("logs", "--no-color", "--tail", "40", check=False)
                    print("---- last compose logs ----\n" + logs.stdout[-6000:], flush=True)
                self.step("down", self.down)
        passed = sum(ok for _, ok, _, _ in self.results)
        print(f"\nSUMMARY ({self.project}): {passed} passed, {len(self.results) - passed} failed")
        for name, ok, detail, elapsed in self.results:
            print(f"  {'ok  ' if ok else 'FAIL'} {name:<6} {elapsed:6.1f} s  {detail}")
        return 0 if passed == len(self.results) else 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-image", default=None, help="base image (NTK_BASE_IMAGE; default: the Dockerfile's)")
    parser.add_argument("--project", default=None, help="compose project name (default ntk-e2e-<pid>)")
    parser.add_argument("--keep-image", action="store_true", help="keep the built image")
    parser.add_argument("--keep-going", action="store_true", help="run the later checks after a failed one")
    return Check(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
