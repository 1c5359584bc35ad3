"""What the lecture scripts share: the command line, the figure file, log-log slope fits.

Every script is ``python examples/lecture/NN_name.py [--url URL] [--quick] [--out DIR]`` and
has ``run(client, quick, out) -> dict`` (the measured quantities behind its figure; the tests
assert on them). Figures are written with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: Where the committed full-mode figures live (the README shows them).
FIGURES = Path(__file__).resolve().parent / "figures"

Run = Callable[[Any, bool, Path], dict[str, Any]]


def loglog_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line through ``(log x, log y)``: ``(slope, intercept)`` (natural logs)."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


def save(fig: plt.Figure, out: Path, name: str) -> Path:
    """Write ``fig`` as ``out/name`` (PNG, 100 dpi: a few tens of KB) and close it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _printable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def main(run: Run, description: str | None) -> None:
    """Parse the command line, run the example against the service and print what it measured."""
    from ntk_client import Client

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small sizes: seconds, for CI")
    parser.add_argument("--out", type=Path, default=FIGURES, help="folder for the PNG (default %(default)s)")
    args = parser.parse_args()
    with Client(args.url) as client:
        measured = run(client, args.quick, args.out)
    print(json.dumps(_printable(measured), indent=2))
