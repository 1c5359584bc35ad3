"""schemathesis 4 against a live server: every phase (examples, coverage, fuzzing, stateful) and
every check, as ``st run`` from the repository root with the root's ``schemathesis.toml`` and its
hooks (``tests/contract/schemathesis_hooks.py``), as a developer's bare run uses them; only its
crash cache goes to a temporary directory.

The server is a real uvicorn process on a temporary data directory. Bounded for CI: the coverage
phase enumerates every boundary case the document defines (about 11 000 requests, most of the
time); fuzzing draws 5 cases per operation; stateful testing follows the document's links
(create → read, cancel, delete, result; lists → newest item) for 20 scenarios.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.__main__ import OPENAPI_PATH
from tests.live_server import running_server

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("schemathesis")) as live:
        yield live.url


@pytest.mark.slow
def test_every_phase_and_check_passes(server: str, tmp_path: Path) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a test dependency"
    # the root's configuration as it is, plus a cache directory (crash files for `st replay`)
    # outside the working tree
    config = tmp_path / "schemathesis.toml"
    config.write_text((ROOT / "schemathesis.toml").read_text(encoding="utf-8")
                      + f"\n[cache]\ndirectory = {json.dumps(str(tmp_path / 'cache'))}\n", encoding="utf-8")
    result = subprocess.run(
        [st, "--config-file", str(config), "run", f"{server}/openapi.json", "--checks", "all", "--phases", ",".join(PHASES),
         "--max-examples", "5", "--seed", "1", "--workers", "1", "--generation-database", "none", "--no-color",
         "--report", "junit", "--report-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    summary = output[output.rindex("SUMMARY"):]
    operations = sum(len(methods) for methods in json.loads(OPENAPI_PATH.read_text(encoding="utf-8"))["paths"].values())
    assert re.search(rf"Tested: {operations}\b", summary), summary
    for phase in PHASES:
        assert re.search(rf"✅ {phase}", summary, re.IGNORECASE), f"{phase} did not pass:\n{summary}"
    assert f"Configuration:    {config}" in output, "schemathesis.toml was not used"
