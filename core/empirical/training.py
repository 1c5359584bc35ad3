"""The lazy-training experiment: a real finite network trained by gradient descent, side by side
with what the neural tangent kernel predicts for the same steps (``/v1/experiments/lazy-training``).

Setup (scalar-output networks, so ``k = 1``). The network of a ``Network`` (any architecture of
:mod:`core.empirical.layers`, inputs ``(n, d)``, ``(n, L, C)`` or ``(n, H, W, C)``) or
``TwoLayerRelu`` spec (``(n, d)``) at hidden width ``width`` (channels for conv layers) is drawn
from ``seed`` (:func:`core.empirical.init_params`) and
trained by full-batch gradient descent on the data term of the API's trajectory loss

    L(θ) = (1/2N) Σ_i (f_θ(x_i) − y_i)²,   θ_{s+1} = θ_s − η ∇L(θ_s) = θ_s − (η/N) Σ_i r_i ∇θ f(x_i),

with ``r = f_θ(X) − y`` and ``N = n`` for ``normalization="mean"``, ``N = 1`` for ``"sum"`` (the
conventions of ``core.dynamics``). Step 0 is the initialization. At every reported step the
network's train loss, train/test predictions, test loss, ``‖θ_s − θ_0‖ / ‖θ_0‖`` and the relative
change ``‖K_s − K_0‖_F / ‖K_0‖_F`` of its empirical NTK on the training points are recorded.

The NTK side uses the infinite-width NTK ``K`` of the same spec (standard parameterization: with
every hidden width set to ``width``, :func:`core.kernels.layer_widths_applied`) under gradient
descent with the same ``η`` and ``N`` (``method="gd"``), from one eigendecomposition of ``K``
(:func:`core.dynamics.trajectory`):

- ``ntk_from_zero``: ``f_0 = 0``, exactly the API's trajectory convention;
- ``ntk_from_network_init``: the linearization of *this* network, started from its own outputs
  ``f_0``: ``u(s) = (I − ηK/N)^s u(0)`` for ``u = f − y`` on the training points and
  ``f_s(x*) = f_0(x*) + K(x*, X) α(s)``, where ``α(s)`` is the dynamics' dual coefficient for the
  residual target ``y − f_0(X)``. Its losses come from the same call (targets shifted by ``f_0``).

As the width grows the network trains lazily: ``θ`` and ``K_s`` move by ``O(1/√width)``
relative to their size, and the gap between the network and ``ntk_from_network_init`` shrinks.

Cost. Training runs ``max(steps)`` steps, each one forward pass (:func:`apply`) and one
vector–Jacobian product (:func:`gradients`: a forward and a backward pass): ``O(n·P)`` with
``P`` the parameter count (``O(n·Σ positions·P_layer)`` for conv nets). Each reported step adds one exact empirical NTK on the training points
(``O(n·P + n²·width)`` for one hidden width, ``O(n·P + n²·Σ widths)`` deeper) and a forward pass
on the test points: the costly part when many steps are reported. The infinite-width side costs
one Gram matrix, one ``eigh`` (``O(n³)``) and ``O(n²)`` per reported step.
:func:`lazy_training_work` estimates the total in multiply-adds for the service's limits, and
:func:`lazy_training_memory_entries` the float entries held at peak.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.dynamics import (
    EigenBasis,
    Normalization,
    Trajectory,
    normalization_count,
    trajectory,
)
from core.empirical.network import (
    EmpiricalSpec,
    _float_dtype,
    add_scaled,
    apply,
    architecture,
    as_inputs,
    gradients,
    init_params,
    input_ranks,
    parameter_count,
    params_distance,
    params_norm,
)
from core.empirical.ntk import forward_work, kernels_from_params, ntk_work, working_memory_entries
from core.kernels import gram, layer_widths_applied
from core.kernels.engine import pair_work
from core.kernels.shapes import is_chain
from core.kernels.spec import Network

__all__ = [
    "MAX_REPORTED_STEPS",
    "MAX_TRAINING_STEPS",
    "LazyTrainingResult",
    "lazy_training",
    "lazy_training_memory_entries",
    "lazy_training_work",
]

#: Most reported steps in one experiment (each one costs an empirical NTK).
MAX_REPORTED_STEPS = 1000
#: Largest step count that may be requested (gradient-descent steps actually run).
MAX_TRAINING_STEPS = 1_000_000


@dataclass(frozen=True, eq=False)
class LazyTrainingResult:
    """Network and NTK predictions at each reported step (index 0 of every array is the step).

    Network (computed in the requested dtype, reported as float64):

    - ``train_loss`` (T,): ``Σ (f − y)² / 2N`` on the training points;
    - ``train_predictions`` (T, n) and ``test_predictions`` (T, m) or None;
    - ``test_loss`` (T,) or None: the same normalization with the test entries (N = m for
      "mean", 1 for "sum"), as in :class:`core.dynamics.Trajectory`;
    - ``relative_parameter_change`` (T,): ``‖θ_s − θ_0‖ / ‖θ_0‖``;
    - ``relative_kernel_change`` (T,): ``‖K_s − K_0‖_F / ‖K_0‖_F`` of the empirical NTK on the
      training points (the absolute ``‖K_s − K_0‖_F`` if ``K_0 = 0``).

    Infinite-width NTK under gradient descent (``core.dynamics.Trajectory`` objects, predictions
    (T, n) / (T, m)): ``ntk_from_zero`` (``f_0 = 0``, the API's trajectory) and
    ``ntk_from_network_init`` (the linearization started from the network's own ``f_0``).

    Gap between the network and ``ntk_from_network_init``: ``gap_train[s] = ‖f_net − f_ntk‖ /
    ‖y‖`` over the training points; ``gap_test[s]`` the same on the test points divided by
    ``‖y_test‖`` or, without ``y_test``, the RMS difference over the RMS of ``y_train``
    (a zero target norm leaves the difference unscaled). ``max_gap_train``/``max_gap_test``
    are their maxima over the reported steps.

    ``eigenvalues`` of the infinite NTK on the training points (descending),
    ``max_stable_learning_rate = 2N / λ_max``, ``parameter_count`` of the network.
    """

    steps: tuple[int, ...]
    width: int
    seed: int
    learning_rate: float
    normalization: Normalization
    parameter_count: int
    train_loss: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray | None
    test_loss: np.ndarray | None
    relative_parameter_change: np.ndarray
    relative_kernel_change: np.ndarray
    ntk_from_zero: Trajectory
    ntk_from_network_init: Trajectory
    gap_train: np.ndarray
    gap_test: np.ndarray | None
    max_gap_train: float
    max_gap_test: float | None
    eigenvalues: np.ndarray
    max_stable_learning_rate: float


# ------------------------------------------------------------------------------ validation


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    if isinstance(steps, (str, bytes)) or np.ndim(steps) != 1:
        raise ValueError("steps must be a 1-D sequence of non-negative integer step counts")
    raw = list(steps)
    if not raw:
        raise ValueError("steps must name at least one step")
    if len(raw) > MAX_REPORTED_STEPS:
        raise ValueError(f"too many steps: {len(raw)} reported steps, at most {MAX_REPORTED_STEPS}")
    out: list[int] = []
    for s in raw:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral):
            raise ValueError(f"steps must be integer step counts, got {s!r}")  # noqa: TRY004 (422)
        if s < 0:
            raise ValueError(f"steps must be ≥ 0, got {int(s)}")
        if out and s <= out[-1]:
            raise ValueError(f"steps must be strictly increasing, got {int(s)} after {out[-1]}")
        out.append(int(s))
    if out[-1] > MAX_TRAINING_STEPS:
        raise ValueError(f"steps go up to {out[-1]}, at most {MAX_TRAINING_STEPS} training steps")
    return tuple(out)


def _check_targets(y: np.typing.ArrayLike, n: int, name: str) -> np.ndarray:
    """``y`` of shape (n,) or (n, 1) as a finite float64 vector (n,)."""
    try:
        arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers") from exc
    if not (arr.shape == (n,) or arr.shape == (n, 1)):
        raise ValueError(
            f"{name} must have shape ({n},) or ({n}, 1) (the network has one output), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr.reshape(n)


def _check_learning_rate(learning_rate: float) -> float:
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, numbers.Real):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")  # noqa: TRY004
    lr = float(learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate!r}")
    return lr


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


# ------------------------------------------------------------------------------ experiment


def _loss(pred: np.ndarray, y: np.ndarray, normalization: Normalization) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return ((pred - y[None]) ** 2).sum(axis=1) / (2.0 * normalization_count(y.size, normalization))


def _gap(net: np.ndarray, ntk: np.ndarray, scale: float) -> np.ndarray:
    """``‖net[s] − ntk[s]‖ / scale`` per step (``scale`` 0: unscaled)."""
    diff = np.sqrt(((net - ntk) ** 2).sum(axis=1))
    return diff / scale if scale > 0 else diff


def _diverged(max_stable: float, learning_rate: float, detail: str, what: str = "training") -> ValueError:
    return ValueError(
        f"{what} diverged; lower learning_rate (max stable ≈ {max_stable:.4g} from the "
        f"infinite-width NTK at these points): {detail} at learning_rate {learning_rate:.4g}"
    )


def lazy_training(
    spec: EmpiricalSpec,
    x_train: np.typing.ArrayLike,
    y_train: np.typing.ArrayLike,
    *,
    width: int,
    seed: int,
    steps: Sequence[int],
    learning_rate: float = 1.0,
    x_test: np.typing.ArrayLike | None = None,
    y_test: np.typing.ArrayLike | None = None,
    normalization: Normalization = "mean",
    dtype: np.typing.DTypeLike = np.float64,
) -> LazyTrainingResult:
    """Train the network of ``spec`` at ``(width, seed)`` by gradient descent and compare with the NTK.

    ``steps``: strictly increasing non-negative integers (step 0 = initialization); training runs
    ``max(steps)`` steps. ``y_train``: shape (n,) or (n, 1); ``y_test`` needs ``x_test``.
    ``dtype`` (float32/float64) is the network's arithmetic; the infinite-width side is float64.
    Raises ``ValueError`` for invalid input; ``"training diverged; lower learning_rate (max stable
    ≈ …)"`` when the network's outputs, losses or kernel stop being finite; and ``"the NTK prediction
    diverged; lower learning_rate (…)"`` when only the linearized prediction overflows (above the
    max stable rate the network may still train, e.g. in the catapult phase, but the response could
    not carry its NTK side). The module docstring gives the model and the cost.
    """
    dt = _float_dtype(dtype)
    step_list = _check_steps(steps)
    lr = _check_learning_rate(learning_rate)
    seed = _check_seed(seed)
    normalization_count(1, normalization)  # validates the name
    ranks = input_ranks(spec)
    x = as_inputs(x_train, dt, name="x_train", ranks=ranks)
    n, d = x.shape[0], x.shape[1:]  # d: the row shape
    arch = architecture(spec, d, width)  # validates spec, width and the fit to the input
    width = arch.width
    y = _check_targets(y_train, n, "y_train")
    xt = None if x_test is None else as_inputs(x_test, dt, d, name="x_test", ranks=ranks)
    if y_test is not None and xt is None:
        raise ValueError("y_test needs x_test")
    yt = None if y_test is None else _check_targets(y_test, xt.shape[0], "y_test")
    y_dt = y.astype(dt)
    if not np.isfinite(y_dt).all():
        raise ValueError(f"y_train has values that are not finite in {dt.name}")
    n_norm = normalization_count(n, normalization)

    # Infinite-width NTK: one Gram matrix, one eigendecomposition.
    inf_spec = layer_widths_applied(spec, width)  # hidden widths = width (standard param.)
    x64 = x.astype(np.float64)
    k_train = gram(inf_spec, x64, outputs=["ntk"])["ntk"]
    k_test = None if xt is None else gram(inf_spec, xt.astype(np.float64), x64, outputs=["ntk"])["ntk"]
    basis = EigenBasis.of(k_train)
    ntk_zero = trajectory(
        k_train, y, step_list, learning_rate=lr, method="gd", normalization=normalization,
        kernel_test_train=k_test, y_test=yt, basis=basis,
    )
    max_stable = ntk_zero.max_stable_learning_rate

    # The finite network, trained step by step.
    params0 = init_params(spec, d, width, seed, dt)
    norm0 = params_norm(params0)
    k0 = kernels_from_params(spec, params0, x, outputs=["ntk"])["ntk"].astype(np.float64)
    k0_norm = float(np.linalg.norm(k0))
    t = len(step_list)
    train_pred = np.empty((t, n))
    test_pred = None if xt is None else np.empty((t, xt.shape[0]))
    param_change = np.empty(t)
    kernel_change = np.empty(t)
    params = params0
    scale = dt.type(-lr / n_norm)
    report = 0
    with np.errstate(over="ignore", invalid="ignore"):
        for s in range(step_list[-1] + 1):
            f = apply(spec, params, x)
            if not np.isfinite(f).all():
                raise _diverged(max_stable, lr, f"the network's outputs are not finite at step {s}")
            if s == step_list[report]:
                train_pred[report] = f
                if test_pred is not None:
                    test_pred[report] = apply(spec, params, xt)
                param_change[report] = params_distance(params, params0) / norm0
                if s == 0:
                    kernel_change[report] = 0.0
                else:
                    ks = kernels_from_params(spec, params, x, outputs=["ntk"])["ntk"]
                    diff = float(np.linalg.norm(ks.astype(np.float64) - k0))
                    kernel_change[report] = diff / k0_norm if k0_norm > 0 else diff
                report += 1
                if s == step_list[-1]:
                    break
            params = add_scaled(params, gradients(spec, params, x, f - y_dt), scale)

    train_loss = _loss(train_pred, y, normalization)
    test_loss = None if yt is None else _loss(test_pred, yt, normalization)
    for name, arr in (
        ("the network's test outputs", test_pred),
        ("the network's loss", train_loss),
        ("the network's test loss", test_loss),
        ("the network's parameters", param_change),
        ("the network's empirical NTK", kernel_change),
    ):
        if arr is not None and not np.isfinite(arr).all():
            raise _diverged(max_stable, lr, f"{name} are not finite")

    # The linearization started from the network's own f_0: dynamics on the residual target.
    f0_train = train_pred[0]
    f0_test = None if test_pred is None else test_pred[0]
    shifted = trajectory(
        k_train, y - f0_train, step_list, learning_rate=lr, method="gd", normalization=normalization,
        kernel_test_train=k_test, y_test=None if yt is None else yt - f0_test, basis=basis,
    )
    ntk_init = replace(
        shifted,
        train_predictions=shifted.train_predictions + f0_train[None],
        test_predictions=None if f0_test is None else shifted.test_predictions + f0_test[None],
    )
    for traj in (ntk_zero, ntk_init):
        for arr in (traj.train_predictions, traj.train_loss, traj.test_predictions, traj.test_loss):
            if arr is not None and not np.isfinite(arr).all():
                raise _diverged(
                    max_stable, lr,
                    f"gradient descent on the linearized network grows without bound above the max "
                    f"stable rate and overflows by step {step_list[-1]} (the finite network stayed finite)",
                    what="the NTK prediction",
                )

    gap_train = _gap(train_pred, ntk_init.train_predictions, float(np.linalg.norm(y)))
    gap_test = None
    if test_pred is not None:
        if yt is not None:
            test_scale = float(np.linalg.norm(yt))
        else:
            test_scale = float(np.linalg.norm(y)) * math.sqrt(xt.shape[0] / n)
        gap_test = _gap(test_pred, ntk_init.test_predictions, test_scale)

    return LazyTrainingResult(
        steps=step_list,
        width=width,
        seed=seed,
        learning_rate=lr,
        normalization=normalization,
        parameter_count=parameter_count(spec, d, width),
        train_loss=train_loss,
        train_predictions=train_pred,
        test_predictions=test_pred,
        test_loss=test_loss,
        relative_parameter_change=param_change,
        relative_kernel_change=kernel_change,
        ntk_from_zero=ntk_zero,
        ntk_from_network_init=ntk_init,
        gap_train=gap_train,
        gap_test=gap_test,
        max_gap_train=float(gap_train.max()),
        max_gap_test=None if gap_test is None else float(gap_test.max()),
        eigenvalues=basis.eigenvalues,
        max_stable_learning_rate=max_stable,
    )


# ------------------------------------------------------------------------------ size estimates


def lazy_training_work(
    spec: EmpiricalSpec,
    n_train: int,
    n_test: int,
    d: int | Sequence[int],
    width: int,
    n_steps: int,
    n_reported: int | None = None,
) -> int:
    """Estimated multiply-adds of :func:`lazy_training` (a time measure; within a small factor).

    ``d`` is the input's row shape (an int for ``n × d``), ``n_steps`` is ``max(steps)``
    (gradient-descent steps run), ``n_reported`` the number of reported steps (default
    ``min(n_steps + 1, MAX_REPORTED_STEPS)``, the most there can be). With ``M`` the multiply-adds
    of one forward pass per example (``Σ fan_in·fan_out`` over the dense layers of a fully
    connected network, ≈ the parameter count; × output positions for conv and dense on positions):

    - per training step ``4·n_train·M`` (a forward pass, then a forward and a backward pass with
      the weight gradients);
    - per reported step an empirical NTK, ``3·n_train·M`` plus its per-layer products
      (:func:`core.empirical.ntk.ntk_work`: ``n_train²·Σ_l (fan_in_l + fan_out_l)`` for a fully
      connected network), and ``n_test·M`` for the test outputs;
    - once: the infinite-width Gram matrices, ``(n_train² + n_train·n_test)`` pairs at
      ``(layers + 1)·32`` each for fully connected chains, else the larger of that and
      ``core.kernels.engine.pair_work``; and ``4·n_train³`` for the eigendecomposition.

    Raises ``ValueError`` for an invalid spec or sizes.
    """
    for value, name in ((n_train, "n_train"), (n_test, "n_test"), (n_steps, "n_steps")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if n_reported is None:
        n_reported = min(int(n_steps) + 1, MAX_REPORTED_STEPS)
    if isinstance(n_reported, bool) or not isinstance(n_reported, numbers.Integral) or n_reported < 1:
        raise ValueError(f"n_reported must be a positive integer, got {n_reported!r}")
    arch = architecture(spec, d, width)
    n, m = int(n_train), int(n_test)
    macs = forward_work(arch)
    layers = len(spec.layers) if isinstance(spec, Network) else 3
    per_pair = (layers + 1) * 32
    if isinstance(spec, Network) and (len(arch.feature_shape) > 1 or not is_chain(spec)):
        per_pair = max(per_pair, pair_work(spec, arch.feature_shape))
    per_step = 4 * n * macs
    per_report = 3 * n * macs + ntk_work(arch, n, n) + m * macs
    once = (n * n + n * m) * per_pair + 4 * n**3
    return int(n_steps) * per_step + int(n_reported) * per_report + once


def lazy_training_memory_entries(
    spec: EmpiricalSpec, n_train: int, n_test: int, d: int | Sequence[int], width: int
) -> int:
    """Estimated float entries held at peak by :func:`lazy_training` (multiply by the itemsize).

    Three parameter-sized arrays (``θ_0``, ``θ_s`` and the gradient) plus the peak of one
    empirical NTK on the training points (:func:`core.empirical.working_memory_entries`, which
    also covers a forward/backward pass on them) and the test points' forward pass.
    """
    params = parameter_count(spec, d, width)
    kernel = working_memory_entries(spec, n_train, n_train, d, width)
    test = working_memory_entries(spec, max(int(n_test), 1), 0, d, width) if n_test else 0
    return 3 * params + max(kernel, test)
