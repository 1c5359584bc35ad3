"""Request checks that need more than one field, or a setting: located 422s and 413s."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.kernels.spec import KernelSpec, Network, default_output, output_names
from service.problems import invalid, too_large
from service.settings import Settings


def check_features(x1: np.ndarray, x2: np.ndarray | None, names: tuple[str, str] = ("x1", "x2")) -> None:
    """``x2`` must have as many features (columns) as ``x1``."""
    if x2 is not None and x2.shape[1] != x1.shape[1]:
        raise invalid(["body", names[1]],
                      f"{names[1]} has {x2.shape[1]} features but {names[0]} has {x1.shape[1]}")


def check_result_size(settings: Settings, n1: int, n2: int, count: int) -> None:
    """Refuse (413) a synchronous response of more than ``max_result_entries`` entries."""
    entries = n1 * n2 * count
    if entries > settings.max_result_entries:
        raise too_large("max_result_entries",
                        f"{count} matrix(es) of {n1} × {n2} is {entries} entries, over {settings.max_result_entries}")


def check_layers(settings: Settings, spec: KernelSpec) -> None:
    """Refuse (413) a network with more than ``max_layers`` layers."""
    if isinstance(spec, Network) and len(spec.layers) > settings.max_layers:
        raise too_large("max_layers", f"the network has {len(spec.layers)} layers, over {settings.max_layers}")


def resolve_which(spec: KernelSpec, which: str | None) -> str:
    """The matrix a learning request uses: ``which`` or the kernel's default."""
    if which is None:
        return default_output(spec)
    if which not in output_names(spec):
        raise invalid(["body", "which"],
                      f"'{which}' is not a matrix of this kernel; choose from {', '.join(output_names(spec))}")
    return which


def check_targets(y: np.ndarray, x: np.ndarray, names: tuple[str, str]) -> None:
    """``y`` needs one row (or entry) per row of ``x``."""
    if y.shape[0] != x.shape[0]:
        raise invalid(["body", names[0]], f"{names[0]} has {y.shape[0]} rows but {names[1]} has {x.shape[0]}")


def check_training_set(settings: Settings, spec: KernelSpec, x: np.ndarray, y: np.ndarray) -> None:
    """Targets match inputs; the set fits the synchronous limits."""
    check_layers(settings, spec)
    check_targets(y, x, ("y_train", "x_train"))
    if x.shape[0] > settings.max_train_size:
        raise too_large("max_train_size", f"{x.shape[0]} training points is over {settings.max_train_size}")


def check_trajectory_options(settings: Settings, options: Any, x_train: np.ndarray, n_outputs: int) -> None:
    """Test data consistent with training data; integer steps for gd; response within limits."""
    if options.x_test is not None:
        check_features(x_train, options.x_test, ("x_train", "x_test"))
    if options.y_test is not None:
        if options.x_test is None:
            raise invalid(["body", "y_test"], "y_test needs x_test (the test inputs it belongs to)")
        check_targets(options.y_test, options.x_test, ("y_test", "x_test"))
        k_test = 1 if options.y_test.ndim == 1 else options.y_test.shape[1]
        if k_test != n_outputs:
            raise invalid(["body", "y_test"], f"y_test has {k_test} output(s) but y_train has {n_outputs}")
    if options.method == "gd":
        for i, t in enumerate(options.times):
            if t != int(t):
                raise invalid(["body", "times", i], f"gd times are step counts: {t} is not an integer")
    n_test = 0 if options.x_test is None else options.x_test.shape[0]
    entries = len(options.times) * (x_train.shape[0] + n_test) * n_outputs
    if entries > settings.max_result_entries:
        raise too_large("max_result_entries",
                        f"{len(options.times)} times × {x_train.shape[0] + n_test} points × {n_outputs} "
                        f"output(s) is {entries} entries, over {settings.max_result_entries}")
