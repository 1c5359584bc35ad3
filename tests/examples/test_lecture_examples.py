"""The lecture examples (examples/lecture/) in quick mode against a real uvicorn: each script's
quantitative claim, checked against the independent reference the script computes (numpy GD,
explicit features, the lecture's closed form, eigh), and its figure written as a PNG."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ntk_client import Client
from tests.live_server import running_server

ROOT = Path(__file__).resolve().parents[2]
LECTURE = ROOT / "examples" / "lecture"


def load(name: str) -> ModuleType:
    """The script ``examples/lecture/<name>.py`` as a module (its folder on sys.path for ``_common``)."""
    if str(LECTURE) not in sys.path:
        sys.path.insert(0, str(LECTURE))
    spec = importlib.util.spec_from_file_location(f"lecture_{name}", LECTURE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("examples-server")) as server:
        yield server.url


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url, timeout=120) as c:
        yield c


def quick_run(name: str, client: Client, out: Path) -> dict[str, Any]:
    measured = load(name).run(client, True, out)
    figure = Path(measured["figure"])
    assert figure.parent == out and figure.name == f"{name}.png"
    data = figure.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5_000
    return measured


def test_linear_regression_gd_stays_in_the_row_space(client: Client, tmp_path: Path) -> None:
    m = quick_run("01_linear_regression", client, tmp_path)
    assert m["theta_max_rel_diff"] < 1e-10  # θ_t read off the service equals numpy GD on θ
    assert m["loss_max_diff"] < 1e-10
    assert m["orth_fraction_max"] < 1e-12  # no component outside the row space of X
    assert m["loss_ratio_final"] < 1e-6
    assert m["dist_to_min_norm_final"] < 1e-3  # heading to the minimum-norm solution X⁺y
    assert m["orth_from_nonzero_init"] == pytest.approx(1.0, abs=1e-9)  # from θ_0 ≠ 0 it never shrinks


def test_polynomial_kernel_separates_the_circles(client: Client, tmp_path: Path) -> None:
    m = quick_run("02_kernel_trick_circles", client, tmp_path)
    assert m["accuracy_polynomial"] >= 0.95
    assert 0.3 <= m["accuracy_linear"] <= 0.7  # chance
    assert m["kernel_vs_explicit_features_max_diff"] < 1e-8  # the kernel trick = ridge on explicit φ


def test_two_layer_ntk_converges_like_inverse_sqrt_width(client: Client, tmp_path: Path) -> None:
    m = quick_run("03_ntk_convergence", client, tmp_path)
    assert -0.6 <= m["slope"] <= -0.4
    assert np.all(np.diff(m["mean_relative_error"]) < 0)
    assert m["service_vs_lecture_formula_max_diff"] < 1e-12
    assert m["reported_error_max_diff"] < 1e-10


def test_lazy_training_weights_and_kernel_move_less_with_width(client: Client, tmp_path: Path) -> None:
    m = quick_run("04_lazy_training", client, tmp_path)
    for key in ("parameter_change_mean", "kernel_change_mean", "test_gap_mean"):
        assert np.all(np.diff(m[key]) < 0), key
    assert -0.65 <= m["parameter_change_slope"] <= -0.35
    assert -0.7 <= m["test_gap_slope"] <= -0.3  # the network's predictions approach the NTK's
    assert -1.2 <= m["kernel_change_slope"] <= -0.4  # at least as fast as m^{-1/2} (≈ −0.8 measured)


def test_residual_components_decay_at_their_eigenvalues(client: Client, tmp_path: Path) -> None:
    m = quick_run("05_eigenbasis_flow", client, tmp_path)
    assert m["closed_form_max_diff"] < 1e-9
    assert m["eigenvalues_max_rel_diff"] < 1e-10
    assert m["fitted_components"] == 20
    assert m["fitted_rate_max_rel_diff"] < 1e-6
    assert m["rates_descending"]  # large eigenvalues first


def test_cntk_with_pooling_is_shift_invariant(client: Client, tmp_path: Path) -> None:
    m = quick_run("06_cntk_shifts", client, tmp_path)
    assert m["cnn_pool_one_shifted"] < 1e-10
    assert m["cnn_pool_finite_width_spread"] < 1e-10
    for key in ("mlp", "cnn_flatten", "cnn_pool"):
        assert m[f"{key}_both_shifted"] < 1e-10, key  # equivariance: shifting both inputs changes nothing
    assert m["mlp_one_shifted"] > 0.1 and m["cnn_flatten_one_shifted"] > 0.1
    assert m["cnn_pool_accuracy"] >= 0.95
    assert m["mlp_accuracy"] <= 0.75


def test_command_line(server_url: str, tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(ROOT / "clients" / "python" / "src"), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(LECTURE / "02_kernel_trick_circles.py"), "--url", server_url, "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": path})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["accuracy_polynomial"] >= 0.95
    assert (tmp_path / "02_kernel_trick_circles.png").is_file()
