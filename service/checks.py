"""Request checks that need more than one field, or a setting: located 422s and 413s."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.kernels.engine import pair_work
from core.kernels.gram import input_ranks
from core.kernels.shapes import trace
from core.kernels.spec import Branches, KernelSpec, Layer, Network, default_output, output_names
from service.problems import invalid, too_large
from service.settings import Settings


def check_features(x1: np.ndarray, x2: np.ndarray | None, names: tuple[str, str] = ("x1", "x2")) -> None:
    """``x2``'s examples must have the shape of ``x1``'s (features, or positions and channels)."""
    if x2 is None:
        return
    if x2.ndim != x1.ndim:
        raise invalid(["body", names[1]], f"{names[1]} has rank {x2.ndim} but {names[0]} has rank {x1.ndim}")
    if x2.shape[1:] != x1.shape[1:]:
        what = "features" if x1.ndim == 2 else "rows of shape"
        first, second = (x1.shape[1], x2.shape[1]) if x1.ndim == 2 else (list(x1.shape[1:]), list(x2.shape[1:]))
        raise invalid(["body", names[1]], f"{names[1]} has {second} {what} but {names[0]} has {first}")


def check_shape(spec: KernelSpec, x: Any, name: str) -> None:
    """``x`` fits ``spec``: a rank the kernel takes (422 at ``name``) and a network that fits rows of
    ``x``'s shape (422 at ``kernel``, naming the layer). ``x`` needs only ``ndim`` and ``shape``
    (jobs pass their datasets' metadata)."""
    if x.ndim not in input_ranks(spec):
        if isinstance(spec, Network):
            raise invalid(["body", name], f"{name} has rank {x.ndim} (shape {list(x.shape)}); network kernels take "
                          "n × d, n × L × C or n × H × W × C inputs")
        raise invalid(["body", name], f"{name} has rank {x.ndim}, but this kernel takes n × d inputs only "
                      "(n × L × C and n × H × W × C inputs are for network kernels)")
    if isinstance(spec, Network):
        try:
            trace(spec, x.shape[1:])
        except ValueError as exc:
            raise invalid(["body", "kernel"], str(exc)) from None


def check_work(settings: Settings, spec: KernelSpec, feature_shape: tuple[int, ...], pairs: int, what: str,
               advice: str | None = None) -> None:
    """Refuse (413) a synchronous network kernel over ``pairs`` example pairs whose estimated work
    (``engine.pair_work``) is over ``max_kernel_work``."""
    if not isinstance(spec, Network):
        return
    work = pairs * pair_work(spec, feature_shape)
    if work > settings.max_kernel_work:
        raise too_large("max_kernel_work", f"this network on {what} is about {work:.3g} multiply-adds, over "
                        f"{settings.max_kernel_work:.3g}", *(() if advice is None else (advice,)))


def check_inputs(settings: Settings, spec: KernelSpec, x: np.ndarray, name: str, n_other: int | None = None) -> None:
    """``check_shape``, then ``check_work`` for ``len(x) × n_other`` pairs (``None``: ``x`` with itself)."""
    check_shape(spec, x, name)
    pairs = x.shape[0] * (x.shape[0] if n_other is None else n_other)
    check_work(settings, spec, x.shape[1:], pairs, f"{pairs} example pairs")


def check_prediction_work(settings: Settings, spec: KernelSpec, x_test: np.ndarray, n_train: int) -> None:
    """``check_work`` for ``n_test × n_train`` pairs (there is no prediction job: the advice is
    smaller batches of test points)."""
    check_work(settings, spec, x_test.shape[1:], x_test.shape[0] * n_train,
               f"{x_test.shape[0]} test × {n_train} training points", "Send the test points in smaller batches.")


def check_result_size(settings: Settings, n1: int, n2: int, count: int) -> None:
    """Refuse (413) a synchronous response of more than ``max_result_entries`` entries."""
    entries = n1 * n2 * count
    if entries > settings.max_result_entries:
        raise too_large("max_result_entries",
                        f"{count} matrix(es) of {n1} × {n2} is {entries} entries, over {settings.max_result_entries}")


def check_layers(settings: Settings, spec: KernelSpec) -> None:
    """Refuse (413) a network with more than ``max_layers`` layers."""
    if isinstance(spec, Network):
        count = count_layers(spec.layers)
        if count > settings.max_layers:
            raise too_large("max_layers", f"the network has {count} layers, over {settings.max_layers}")


def count_layers(layers: tuple[Layer, ...]) -> int:
    """Layers, counting those inside branches."""
    return sum(1 + sum(count_layers(b) for b in layer.branches) if isinstance(layer, Branches) else 1
               for layer in layers)


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
    check_inputs(settings, spec, x, "x_train")
    check_targets(y, x, ("y_train", "x_train"))
    if x.shape[0] > settings.max_train_size:
        raise too_large("max_train_size", f"{x.shape[0]} training points is over {settings.max_train_size}")


def check_trajectory_options(settings: Settings, options: Any, x_train: np.ndarray, n_outputs: int,
                             n_inline: int | None = None) -> None:
    """Test data consistent with training data; integer steps for gd; response within limits.
    ``n_inline``: the points whose predictions the JSON carries (default: training and test points)."""
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
    points = x_train.shape[0] + n_test if n_inline is None else n_inline
    entries = len(options.times) * points * n_outputs
    if entries > settings.max_result_entries:
        detail = (f"{len(options.times)} times × {points} points × {n_outputs} output(s) is {entries} entries, "
                  f"over {settings.max_result_entries}")
        if n_inline is None:
            raise too_large("max_result_entries", detail)
        raise too_large("max_result_entries", detail, "Leave prediction arrays out of `include`: every one is "
                        "also served as .npy by GET /v1/jobs/{id}/result?output=<name>.")
