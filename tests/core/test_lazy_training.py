"""Tests for core.empirical.training: the lazy-training experiment.

References are independent of the code under test where it matters: the first-order change of
the outputs from the empirical NTK at initialization (``kernels_from_params``), gradient descent
on the linearized network iterated step by step with the infinite-width Gram matrix, and
``core.dynamics.trajectory`` called directly. Everything is seeded; widths are chosen so that the
asserted margins are several times the seed-to-seed spread.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.dynamics import trajectory
from core.empirical import (
    LazyTrainingResult,
    apply,
    init_params,
    kernels_from_params,
    lazy_training,
    lazy_training_memory_entries,
    lazy_training_work,
)
from core.empirical.training import MAX_REPORTED_STEPS
from core.kernels import gram, layer_widths_applied
from core.kernels.spec import Activation, Dense, Network, TwoLayerRelu

A = Activation
RELU_NET = Network((Dense(1.0, 0.1), A("relu"), Dense(1.0, 0.1)))
DEEP_STANDARD = Network(
    (Dense(1.2, 0.2), A("erf"), Dense(1.1, 0.1), A("relu"), Dense(0.9, 0.0)), "standard"
)
DEEP_NTK = Network((Dense(1.3, 0.2), A("gelu"), Dense(1.0, None), A("relu"), Dense(0.8, 0.1)))


def data(spec, n=8, d=3, m=5, seed=0):
    """Points on the sphere (radius 1 for two_layer_relu, √d for networks: unit NTK scale)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    xt = rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    xt /= np.linalg.norm(xt, axis=1, keepdims=True)
    if not isinstance(spec, TwoLayerRelu):
        x, xt = x * math.sqrt(d), xt * math.sqrt(d)
    w = rng.standard_normal(d)
    y = np.sin(2.0 * x @ w / np.linalg.norm(x[0]))
    yt = np.sin(2.0 * xt @ w / np.linalg.norm(xt[0]))
    return x, y, xt, yt


def infinite(spec, width, x1, x2=None):
    inf = layer_widths_applied(spec, width) if isinstance(spec, Network) else spec
    return gram(inf, x1, x2, outputs=["ntk"])["ntk"]


def stable_rate(spec, width, x, n_norm):
    """``2N / λ_max`` of the infinite-width NTK: gradient descent on it is stable below this."""
    return 2.0 * n_norm / np.linalg.eigvalsh(infinite(spec, width, x))[-1]


# --------------------------------------------------------------------------- first order


@pytest.mark.parametrize(
    ("spec", "width"), [(RELU_NET, 64), (TwoLayerRelu(), 64), (DEEP_STANDARD, 32), (DEEP_NTK, 48)]
)
@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_one_tiny_step_is_first_order_in_the_empirical_ntk(spec, width, normalization):
    x, y, _, _ = data(spec)
    eta = 1e-6
    res = lazy_training(
        spec, x, y, width=width, seed=3, steps=[0, 1], learning_rate=eta, normalization=normalization
    )
    params0 = init_params(spec, x.shape[1], width, 3)
    f0 = apply(spec, params0, x)
    k0 = kernels_from_params(spec, params0, x, outputs=["ntk"])["ntk"]
    n_norm = y.size if normalization == "mean" else 1
    r = f0 - y
    expected = -eta / n_norm * (k0 @ r)
    np.testing.assert_array_equal(res.train_predictions[0], f0)
    change = res.train_predictions[1] - res.train_predictions[0]
    assert np.linalg.norm(change - expected) <= 1e-4 * np.linalg.norm(expected)
    # ‖Δθ‖² = (η/N)² rᵀ J Jᵀ r = (η/N)² rᵀ K₀ r exactly (Δθ = −(η/N) Jᵀ r)
    norm0 = math.sqrt(sum(float(np.sum(a**2)) for a in params0.arrays()))
    moved = eta / n_norm * math.sqrt(r @ k0 @ r) / norm0
    assert res.relative_parameter_change[0] == 0.0
    assert res.relative_parameter_change[1] == pytest.approx(moved, rel=1e-9)
    assert res.relative_kernel_change[0] == 0.0
    assert 0.0 < res.relative_kernel_change[1] < 1e-4


# --------------------------------------------------------------------------- lazy regime


def _slope(values, widths):
    return math.log(values[-1] / values[0]) / math.log(widths[-1] / widths[0])


@pytest.mark.parametrize("spec", [RELU_NET, TwoLayerRelu()], ids=["dense_relu_dense", "two_layer_relu"])
def test_wider_networks_train_lazily_and_follow_the_ntk(spec):
    widths = [64, 1024, 16384]
    seeds = range(3)
    x, y, xt, _ = data(spec)
    rows = {"param": [], "kernel": [], "gap": [], "gap_test": []}
    for m in widths:
        runs = [
            lazy_training(spec, x, y, width=m, seed=s, steps=[0, 10, 25, 50], learning_rate=1.0, x_test=xt)
            for s in seeds
        ]
        for r in runs:
            assert r.train_loss[-1] < 0.5 * r.train_loss[0]  # it does train
            assert r.gap_train[0] == 0.0 and r.gap_test[0] == 0.0
        rows["param"].append(np.mean([r.relative_parameter_change[-1] for r in runs]))
        rows["kernel"].append(np.mean([r.relative_kernel_change[-1] for r in runs]))
        rows["gap"].append(np.mean([r.max_gap_train for r in runs]))
        rows["gap_test"].append(np.mean([r.max_gap_test for r in runs]))
    for name, values in rows.items():
        assert values[0] > values[1] > values[2], (name, values)
    # ~ 1/√width (measured: −0.5 for θ, ≈ −0.65 for K and the gaps at these widths)
    for name in ("param", "kernel", "gap"):
        assert -0.9 < _slope(rows[name], widths) < -0.3, (name, rows[name])
    assert rows["param"][-1] < 0.02 and rows["kernel"][-1] < 0.01 and rows["gap"][-1] < 0.02


# --------------------------------------------------------------------------- NTK predictions


@pytest.mark.parametrize("spec", [TwoLayerRelu(), RELU_NET, DEEP_STANDARD])
@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_ntk_from_zero_is_the_gd_trajectory(spec, normalization):
    x, y, xt, yt = data(spec, n=10, m=4)
    width, steps = 128, [0, 1, 5, 40]
    eta = 0.35 * stable_rate(spec, width, x, y.size if normalization == "mean" else 1)
    res = lazy_training(
        spec, x, y, width=width, seed=1, steps=steps, learning_rate=eta, x_test=xt, y_test=yt,
        normalization=normalization,
    )
    ref = trajectory(
        infinite(spec, width, x), y, steps, learning_rate=eta, method="gd", normalization=normalization,
        kernel_test_train=infinite(spec, width, xt, x), y_test=yt,
    )
    for field in ("train_loss", "train_predictions", "test_predictions", "test_loss", "eigenvalues"):
        np.testing.assert_allclose(getattr(res.ntk_from_zero, field), getattr(ref, field), rtol=1e-12, atol=1e-14)
    assert res.max_stable_learning_rate == ref.max_stable_learning_rate
    np.testing.assert_array_equal(res.eigenvalues, ref.eigenvalues)


@pytest.mark.parametrize("spec", [TwoLayerRelu(), DEEP_STANDARD])
def test_ntk_from_network_init_is_the_linearized_gd_iteration(spec):
    """u_{s+1} = u_s − (η/N) K u_s from the network's own f_0, iterated step by step."""
    x, y, xt, yt = data(spec, n=9, m=4)
    width, seed, steps = 64, 2, [0, 1, 7, 30]
    eta = 0.45 * stable_rate(spec, width, x, y.size)
    res = lazy_training(spec, x, y, width=width, seed=seed, steps=steps, learning_rate=eta, x_test=xt, y_test=yt)
    k, kt = infinite(spec, width, x), infinite(spec, width, xt, x)
    params0 = init_params(spec, x.shape[1], width, seed)
    f, ft = apply(spec, params0, x), apply(spec, params0, xt)
    train, test = {}, {}
    for s in range(steps[-1] + 1):
        train[s], test[s] = f.copy(), ft.copy()
        u = f - y
        f, ft = f - eta / y.size * (k @ u), ft - eta / y.size * (kt @ u)
    traj = res.ntk_from_network_init
    for i, s in enumerate(steps):
        np.testing.assert_allclose(traj.train_predictions[i], train[s], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(traj.test_predictions[i], test[s], rtol=1e-9, atol=1e-12)
        assert traj.train_loss[i] == pytest.approx(np.sum((train[s] - y) ** 2) / (2 * y.size), rel=1e-9)
        assert traj.test_loss[i] == pytest.approx(np.sum((test[s] - yt) ** 2) / (2 * yt.size), rel=1e-9)
        gap = np.linalg.norm(res.train_predictions[i] - train[s]) / np.linalg.norm(y)
        assert res.gap_train[i] == pytest.approx(gap, rel=1e-9, abs=1e-15)
        gap_t = np.linalg.norm(res.test_predictions[i] - test[s]) / np.linalg.norm(yt)
        assert res.gap_test[i] == pytest.approx(gap_t, rel=1e-9, abs=1e-15)
    assert res.max_gap_train == pytest.approx(res.gap_train.max())
    # network losses are the same normalization
    np.testing.assert_allclose(
        res.train_loss, np.sum((res.train_predictions - y) ** 2, axis=1) / (2 * y.size), rtol=1e-12
    )
    np.testing.assert_allclose(
        res.test_loss, np.sum((res.test_predictions - yt) ** 2, axis=1) / (2 * yt.size), rtol=1e-12
    )


# --------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("spec", [RELU_NET, TwoLayerRelu(), DEEP_STANDARD])
def test_train_loss_is_non_increasing_for_a_small_learning_rate(spec):
    x, y, _, _ = data(spec, n=12)
    eta = 0.1 * stable_rate(spec, 128, x, y.size)
    res = lazy_training(spec, x, y, width=128, seed=4, steps=list(range(41)), learning_rate=eta)
    assert eta < 0.5 * res.max_stable_learning_rate
    assert np.all(np.diff(res.train_loss) <= 0.0), res.train_loss
    assert res.train_loss[-1] < 0.9 * res.train_loss[0]
    assert np.all(np.diff(res.relative_parameter_change) > 0)


def test_sum_normalization_is_mean_with_learning_rate_times_n():
    x, y, xt, yt = data(RELU_NET, n=10)
    kwargs = {"width": 96, "seed": 0, "steps": [0, 3, 20], "x_test": xt, "y_test": yt}
    mean = lazy_training(RELU_NET, x, y, learning_rate=0.8, **kwargs)
    total = lazy_training(RELU_NET, x, y, learning_rate=0.8 / y.size, normalization="sum", **kwargs)
    np.testing.assert_allclose(total.train_predictions, mean.train_predictions, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total.train_loss, mean.train_loss * y.size, rtol=1e-10)
    np.testing.assert_allclose(total.test_loss, mean.test_loss * yt.size, rtol=1e-10)
    for a, b in ((total.ntk_from_network_init, mean.ntk_from_network_init), (total.ntk_from_zero, mean.ntk_from_zero)):
        np.testing.assert_allclose(a.train_predictions, b.train_predictions, rtol=1e-10, atol=1e-12)
    assert total.max_stable_learning_rate == pytest.approx(mean.max_stable_learning_rate / y.size)


def test_float32_follows_float64_and_step_zero_only():
    x, y, xt, _ = data(TwoLayerRelu())
    r64 = lazy_training(TwoLayerRelu(), x, y, width=256, seed=5, steps=[0, 20], x_test=xt)
    r32 = lazy_training(TwoLayerRelu(), x, y, width=256, seed=5, steps=[0, 20], x_test=xt, dtype=np.float32)
    assert r32.train_predictions.dtype == np.float64
    np.testing.assert_allclose(r32.train_predictions, r64.train_predictions, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r32.relative_kernel_change, r64.relative_kernel_change, rtol=1e-2, atol=1e-5)
    only = lazy_training(TwoLayerRelu(), x, y.reshape(-1, 1), width=256, seed=5, steps=[0], x_test=xt)
    assert isinstance(only, LazyTrainingResult)
    assert only.steps == (0,) and only.train_predictions.shape == (1, y.size)
    np.testing.assert_array_equal(only.train_predictions[0], r64.train_predictions[0])
    assert only.max_gap_train == 0.0 and only.max_gap_test == 0.0
    assert only.relative_parameter_change[0] == 0.0 and only.test_loss is None
    np.testing.assert_array_equal(only.ntk_from_zero.train_predictions, 0.0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("spec", [RELU_NET, TwoLayerRelu()])
def test_huge_learning_rate_reports_divergence(spec, dtype):
    x, y, _, _ = data(spec)
    mslr = lazy_training(spec, x, y, width=64, seed=0, steps=[0]).max_stable_learning_rate
    with pytest.raises(ValueError, match=r"training diverged; lower learning_rate \(max stable ≈ ") as info:
        lazy_training(spec, x, y, width=64, seed=0, steps=[0, 1000], learning_rate=1e4, dtype=dtype)
    assert f"{mslr:.4g}" in str(info.value)


_X, _Y, _XT, _YT = data(RELU_NET)


def test_above_the_stable_rate_the_network_can_catapult_while_the_ntk_overflows():
    """At 1.5× the max stable rate the two-layer net leaves the lazy regime (its kernel moves by
    O(1)) and still fits, while GD on the linearized network grows like 2^s: refused once it overflows."""
    spec = TwoLayerRelu()
    x, y, _, _ = data(spec)
    eta = 1.5 * stable_rate(spec, 1024, x, y.size)
    res = lazy_training(spec, x, y, width=1024, seed=0, steps=[0, 200], learning_rate=eta)
    assert res.train_loss[-1] < 1e-6 * res.train_loss[0]
    assert res.relative_kernel_change[-1] > 0.2
    assert res.ntk_from_network_init.train_loss[-1] > 1e50
    with pytest.raises(ValueError, match=r"the NTK prediction diverged; lower learning_rate \(max stable ≈ "):
        lazy_training(spec, x, y, width=1024, seed=0, steps=[0, 1200], learning_rate=eta)


def _bad(**overrides):
    kwargs = {"spec": RELU_NET, "x_train": _X, "y_train": _Y, "width": 16, "seed": 0, "steps": [0, 2]}
    kwargs.update(overrides)
    spec, x_train, y_train = kwargs.pop("spec"), kwargs.pop("x_train"), kwargs.pop("y_train")
    return lambda: lazy_training(spec, x_train, y_train, **kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (_bad(steps=[0, -1]), "≥ 0"),
        (_bad(steps=[-3]), "≥ 0"),
        (_bad(steps=[5, 2]), "strictly increasing"),
        (_bad(steps=[2, 2]), "strictly increasing"),
        (_bad(steps=[]), "at least one step"),
        (_bad(steps=[0.5]), "integer"),
        (_bad(steps=[True]), "integer"),
        (_bad(steps=[[1, 2]]), "1-D"),
        (_bad(steps=7), "1-D"),
        (_bad(steps=list(range(MAX_REPORTED_STEPS + 1))), "too many steps"),
        (_bad(steps=[10**9]), "at most"),
        (_bad(y_train=np.zeros((8, 2))), r"shape \(8,\) or \(8, 1\)"),
        (_bad(y_train=np.zeros(7)), r"shape \(8,\)"),
        (_bad(y_train=np.r_[np.nan, np.zeros(7)]), "y_train contains non-finite"),
        (_bad(x_train=np.r_[[[np.inf, 0, 0]], _X[1:]]), "x_train contains non-finite"),
        (_bad(x_train=_X[0]), "2-D"),
        (_bad(x_test=_XT[:, :2]), "x_test has 2 features"),
        (_bad(y_test=_YT), "y_test needs x_test"),
        (_bad(x_test=_XT, y_test=_YT[:3]), "y_test must have shape"),
        (_bad(learning_rate=0.0), "learning_rate"),
        (_bad(learning_rate=float("inf")), "learning_rate"),
        (_bad(normalization="median"), "normalization"),
        (_bad(width=0), "width"),
        (_bad(seed=-1), "seed"),
        (_bad(dtype=np.int32), "dtype"),
        (_bad(spec=Network((Dense(), A("relu")))), "last layer"),
        (_bad(spec=Network((Dense(), A("nope"), Dense()))), "nope"),
    ],
)
def test_invalid_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- cost estimates


def test_work_and_memory_estimates():
    work = lambda spec, **kw: lazy_training_work(
        spec, kw.get("n", 64), kw.get("m", 16), kw.get("d", 8), kw.get("width", 4096),
        kw.get("steps", 100), kw.get("reported", 10),
    )
    for spec in (RELU_NET, TwoLayerRelu(), DEEP_STANDARD):
        w = work(spec)
        assert w > 0
        assert work(spec, width=8192) > w and work(spec, n=128) > w and work(spec, reported=20) > w
        # linear in the number of training steps
        assert work(spec, steps=300) - work(spec, steps=200) == work(spec, steps=200) - work(spec, steps=100)
        assert lazy_training_memory_entries(spec, 64, 16, 8, 4096) > 3 * 8 * 4096
    # a deep network's m×m hidden layer dominates at large width
    assert work(DEEP_STANDARD) > 100 * work(RELU_NET)
    assert lazy_training_work(RELU_NET, 64, 0, 8, 1024, 50) == lazy_training_work(RELU_NET, 64, 0, 8, 1024, 50, 51)
    with pytest.raises(ValueError):
        lazy_training_work(RELU_NET, -1, 0, 8, 1024, 50)
    with pytest.raises(ValueError):
        lazy_training_work(RELU_NET, 4, 0, 8, 0, 50)
