"""A real uvicorn running the service in a subprocess, on a free loopback port and its own data directory.

``running_server(folder, **settings)`` serves every test module that needs a live server (client,
examples, schemathesis, overload): it yields a :class:`LiveServer` once ``/readyz`` answers ready,
and stops the process on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LiveServer:
    """``url``: ``http://127.0.0.1:<port>``; ``process``: the server (e.g. for its pid's memory)."""

    url: str
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(folder: Path, startup_timeout: float = 60.0, **settings: str) -> Iterator[LiveServer]:
    """``python -m service serve`` with ``NTK_DATA_DIR=folder/data`` and ``NTK_<KEY>=value`` for ``settings``.

    One Dask worker unless ``dask_workers`` says otherwise. The server's log is ``folder/server.log`` (its tail is
    shown if it does not come up).
    """
    port = free_port()
    env = os.environ | {"NTK_DATA_DIR": str(folder / "data"), "NTK_LOG_LEVEL": "WARNING", "NTK_DASK_WORKERS": "1"}
    env |= {f"NTK_{key.upper()}": str(value) for key, value in settings.items()}
    if "api_keys" not in settings:
        env.pop("NTK_API_KEYS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port)], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:  # up, and the kernel engine loaded
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start:\n{log_path.read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{base}/readyz", timeout=5)
                if ready.status_code == 200 and "compiling" not in ready.text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield LiveServer(base, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
