#!/usr/bin/env python3
"""One-command set-up for a fresh machine that has only Python 3.11+.

    python3 dev.py serve [--host H] [--port P]   # venv + install + start the API on 127.0.0.1:8000
    python3 dev.py test [pytest args...]         # venv + install with test extras + ruff + the whole suite

The virtual environment lives in ``.venv``; it is (re)installed only when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
#: What ``test`` lints (rules: ``[tool.ruff.lint]`` in pyproject.toml) before running pytest.
LINTED = ("core", "service", "tests", "bench", "deploy", "clients", "examples")


def ensure_env(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Python 3.11+ is required; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extras}]" if extras else "."
    print(f"installing {target} into {VENV}", flush=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True, cwd=ROOT)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", "-e", target], check=True, cwd=ROOT)
    stamp.write_text(digest)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test"}:
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "serve":
        ensure_env("")
        return subprocess.call([str(PYTHON), "-m", "service", "serve", *rest], cwd=ROOT)
    ensure_env("test")
    lint = subprocess.call([str(PYTHON), "-m", "ruff", "check", *LINTED], cwd=ROOT)
    if lint != 0:
        print("ruff check failed: fix the findings above (many with `.venv/bin/ruff check --fix`)", flush=True)
        return lint
    return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
