"""Finite-width networks beyond dense chains: conv, pooling, flatten, layer_norm, branches.

References are independent of the code under test: per-example Jacobians by central finite
differences of ``apply`` in float64 (the empirical NTK must equal ``J Jᵀ``, the VJP ``Jᵀ r``),
direct NumPy evaluations of single layers written here, and, for the convergence tests, the
infinite-width kernels of ``core.kernels.gram``.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from core.empirical import (
    apply,
    empirical_kernels,
    flatten,
    gradients,
    init_params,
    kernels_from_params,
    lazy_training,
    lazy_training_memory_entries,
    lazy_training_work,
    parameter_count,
    working_memory_entries,
)
from core.empirical import layers as finite_layers
from core.empirical import ntk as ntk_module
from core.empirical.layers import FINITE
from core.kernels import gram
from core.kernels.registry import LAYER_KINDS
from core.kernels.spec import (
    Activation,
    AvgPool,
    Branches,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    GlobalSumPool,
    LayerNorm,
    Network,
    SumPool,
    TwoLayerRelu,
)
from tests.core.test_empirical import fd_jacobian, net

A = Activation


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """Tiny matrices: one BLAS thread is fastest (more threads only spin on a busy machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an optional speed-up
        yield
        return
    with threadpool_limits(1):
        yield




def images(n, shape=(5, 4, 2), seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape))


# ------------------------------------------------------------------------------ the registry


def test_every_registered_layer_kind_has_a_finite_definition():
    assert set(FINITE) == set(LAYER_KINDS)
    for kind in FINITE.values():
        for method in ("plan", "forward", "backward"):
            assert callable(getattr(kind, method))


# ------------------------------------------------------------------------------ exactness

FD_SPECS = {
    "conv_same_circular_valid_stride": net(
        Conv((3, 2), None, "SAME", 1.3, 0.2), A("relu"),
        Conv((2, 3), (2, 1), "CIRCULAR", 1.1, None), A("erf"),
        Conv((2, 2), None, "VALID", 0.9, 0.1), Flatten(), Dense(1.0, 0.1)),
    "conv_same_stride_even_filter": net(
        Conv((2, 2), (2, 2), "SAME", 1.2, 0.0), A("gelu"), GlobalSumPool(), Dense(0.8, 0.3)),
    "residual_sum": net(
        Conv((3, 3), None, "SAME", 1.2, 0.1),
        Branches(((A("relu"), Conv((3, 3), None, "SAME", 1.0, 0.2)), ())),
        Branches(((A("tanh"), Conv((1, 1), None, "VALID", 1.1, None), A("abs"), Dense(0.9, 0.1)), ())),
        GlobalAvgPool(), Dense(1.0, 0.1)),
    "product_merge": net(
        Branches(((Conv((2, 2), None, "SAME", 1.0, 0.1),), (Conv((1, 1), None, "VALID", 1.2, None), A("tanh")),
                  (Conv((3, 1), None, "CIRCULAR", 0.7, 0.4),)), "product"),
        Flatten(), Dense(1.0, None)),
    "layer_norm_pools": net(
        Conv((3, 3), None, "SAME", 1.2, 0.1), LayerNorm(), A("relu"), AvgPool((2, 2), None, "SAME"),
        Conv((2, 2), None, "CIRCULAR", 1.0, 0.2), LayerNorm(eps=1e-3), SumPool((2, 2), (1, 1), "CIRCULAR"),
        GlobalAvgPool(), Dense(1.0, 0.1)),
    "dense_on_positions_flatten": net(
        Dense(1.3, 0.2), A("sin"), AvgPool((3, 2), (1, 2), "VALID"), Dense(1.1, None), A("relu"),
        Flatten(), Dense(0.9, 0.2), A("swish"), Dense(1.0, 0.1)),
    "circular_window_larger_than_input": net(
        Conv((7, 3), (3, 2), "CIRCULAR", 1.4, 0.1), A("leaky_relu", 0.2), GlobalSumPool(), Dense(1.0)),
}
ONE_D = net(Conv((3,), None, "SAME", 1.3, 0.2), A("relu"), Conv((2,), (2,), "VALID", 1.0, None),
            A("erf"), AvgPool((2,), None, "CIRCULAR"), Flatten(), Dense(1.0, 0.1))


def _check_exact(spec, x1, x2, width, seed=1, route=None):
    params = init_params(spec, x1.shape[1:], width, seed)
    j1, j2 = fd_jacobian(spec, params, x1), fd_jacobian(spec, params, x2)
    got = kernels_from_params(spec, params, x1, x2, force_route=route)
    sym = kernels_from_params(spec, params, x1, force_route=route)
    scale = np.abs(j1 @ j1.T).max()
    np.testing.assert_allclose(got["ntk"], j1 @ j2.T, atol=1e-7 * scale, rtol=1e-6)
    np.testing.assert_allclose(sym["ntk"], j1 @ j1.T, atol=1e-7 * scale, rtol=1e-6)
    assert np.array_equal(sym["ntk"], sym["ntk"].T) and np.array_equal(sym["nngp"], sym["nngp"].T)
    # nngp: the readout's input features u (∂f/∂W_readout = w_mult·u) times w²/fan_in, plus b²
    readout = spec.layers[-1]
    fan_in = params.weights[-1].shape[1]
    n_last = fan_in + (0 if params.biases[-1] is None else 1)
    start = j1.shape[1] - n_last
    w_mult = readout.w_std / math.sqrt(fan_in) if spec.parameterization == "ntk" else 1.0
    u1, u2 = j1[:, start : start + fan_in] / w_mult, j2[:, start : start + fan_in] / w_mult
    want = readout.w_std**2 / fan_in * (u1 @ u2.T) + (readout.b_std or 0.0) ** 2
    np.testing.assert_allclose(got["nngp"], want, atol=1e-7 * np.abs(want).max(), rtol=1e-6)
    # the VJP of the same network
    r = np.linspace(-1.0, 2.0, x1.shape[0])
    grads = gradients(spec, params, x1, r)
    assert [g.shape for g in grads.arrays()] == [p.shape for p in params.arrays()]
    np.testing.assert_allclose(flatten(grads), j1.T @ r, rtol=1e-6, atol=1e-8 * np.abs(j1).max())


@pytest.mark.parametrize("name", list(FD_SPECS))
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_empirical_ntk_nngp_and_vjp_equal_finite_differences(name, parameterization):
    spec = Network(FD_SPECS[name].layers, parameterization)
    _check_exact(spec, images(3), images(2, seed=1), width=3)


def test_one_spatial_axis_equals_finite_differences():
    x = np.random.default_rng(2).standard_normal((5, 7, 2))
    _check_exact(ONE_D, x[:3], x[3:], width=3)


@pytest.mark.parametrize("route", ["gram", "grad"])
def test_both_routes_are_exact(route):
    _check_exact(FD_SPECS["conv_same_circular_valid_stride"], images(3), images(2, seed=1), width=3, route=route)


def test_routes_blocks_and_chunks_agree(monkeypatch):
    spec = FD_SPECS["residual_sum"]
    x1, x2 = images(7), images(5, seed=3)
    params = init_params(spec, x1.shape[1:], 6, seed=4)
    ref = kernels_from_params(spec, params, x1, x2)
    ref_sym = kernels_from_params(spec, params, x1)
    monkeypatch.setattr(ntk_module, "BLOCK_ENTRIES", 64)  # pair blocks of 1 × 1, one channel per chunk
    monkeypatch.setattr(ntk_module, "ALL_PATCHES_ENTRIES", 0)
    monkeypatch.setattr(finite_layers, "PATCH_ENTRIES", 1)  # conv patches one example at a time
    for route in ("gram", "grad"):
        got = kernels_from_params(spec, params, x1, x2, force_route=route)
        got_sym = kernels_from_params(spec, params, x1, force_route=route)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(got_sym[k], ref_sym[k], rtol=1e-12, atol=1e-12)
            assert np.array_equal(got_sym[k], got_sym[k].T)


def test_layers_match_direct_numpy_evaluations():
    """Single layers against loops written here (NTK parameterization, one channel in and out)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, 4, 1))

    def only(layer):  # global sum of the layer's output through a readout of weight 1 / √1
        spec = net(layer, GlobalSumPool(), Dense(1.0))
        p = init_params(spec, x.shape[1:], 1, seed=0)
        p = p.map(lambda a: np.ones_like(a))
        return spec, p

    # conv 3×3 SAME (zeros) stride 1: Σ_s Σ_δ x[s + δ − 1] / √9 with unit weights
    spec, p = only(Conv((3, 3), None, "SAME", 1.0, None))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(xp[:, i : i + 5, j : j + 4].sum(axis=(1, 2, 3)) for i in range(3) for j in range(3)) / 3.0
    np.testing.assert_allclose(apply(spec, p, x), want, rtol=1e-12)
    # CIRCULAR wraps: every input position is counted 9 times
    spec, p = only(Conv((3, 3), None, "CIRCULAR", 1.0, None))
    np.testing.assert_allclose(apply(spec, p, x), 9 * x.sum(axis=(1, 2, 3)) / 3.0, rtol=1e-12)
    # avg pool 2×2 SAME on 5×4 (normalize_edges=False): 3×2 windows, the last row padded with zeros
    spec = net(AvgPool((2, 2), None, "SAME"), Flatten(), Dense(1.0))
    p = init_params(spec, x.shape[1:], 1, seed=0)
    w = p.weights[0].reshape(3, 2)
    xp = np.pad(x[..., 0], ((0, 0), (0, 1), (0, 0)))
    pooled = xp.reshape(2, 3, 2, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(apply(spec, p, x), (pooled * w).sum(axis=(1, 2)) / math.sqrt(6), rtol=1e-12)
    # layer norm over channels
    x3 = rng.standard_normal((2, 3, 4))
    spec = net(LayerNorm(1e-3), Flatten(), Dense(1.0))
    p = init_params(spec, x3.shape[1:], 1, seed=0)
    y = (x3 - x3.mean(-1, keepdims=True)) / np.sqrt(x3.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(apply(spec, p, x3), y.reshape(2, -1) @ p.weights[0][0] / math.sqrt(12), rtol=1e-12)


def test_dense_chains_keep_their_results():
    """A chain through the general path equals the chain path (rank-2 inputs, deep networks)."""
    spec = net(Dense(1.2, 0.1), A("relu"), Dense(1.1, 0.2), A("erf"), Dense(1.0, 0.1))
    x = np.random.default_rng(0).standard_normal((6, 3))
    params = init_params(spec, 3, 9, seed=2)
    j = fd_jacobian(spec, params, x)
    np.testing.assert_allclose(kernels_from_params(spec, params, x)["ntk"], j @ j.T, rtol=1e-6, atol=1e-8)
    # global pooling and flatten are the identity on n × d rows
    wrapped = net(Dense(1.2, 0.1), A("relu"), GlobalAvgPool(), Dense(1.1, 0.2), A("erf"), Flatten(),
                  Dense(1.0, 0.1))
    got = kernels_from_params(wrapped, params, x)
    for k, v in kernels_from_params(spec, params, x).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12)


# ------------------------------------------------------------------------------ determinism, API


def test_seeded_network_independent_of_inputs_and_float32():
    spec = FD_SPECS["layer_norm_pools"]
    x1, x2 = images(3), images(4, seed=1)
    first = empirical_kernels(spec, x1, width=8, seed=5)
    bigger = empirical_kernels(spec, np.concatenate([x1, x2]), width=8, seed=5)
    for k in first:
        np.testing.assert_allclose(bigger[k][:3, :3], first[k], rtol=1e-12, atol=1e-14)
    cross = empirical_kernels(spec, x1, x2, width=8, seed=5)
    for k in first:
        np.testing.assert_allclose(cross[k], bigger[k][:3, 3:], rtol=1e-12, atol=1e-14)
    k32 = empirical_kernels(spec, x1, x2, width=8, seed=5, dtype=np.float32)
    for k in k32:
        assert k32[k].dtype == np.float32
        np.testing.assert_allclose(k32[k], cross[k], rtol=2e-4, atol=2e-5 * np.abs(cross[k]).max())
    assert init_params(spec, x1.shape[1:], 8, 5, np.float32).weights[1].shape == (8, 2, 2, 8)


def test_parameters_are_drawn_layer_by_layer_in_spec_order():
    spec = net(Conv((3, 2), None, "SAME", 1.3, 0.2), Branches(((Dense(1.1, None),), (Conv((1, 1), w_std=0.7),))),
               Flatten(), Dense(2.0, 0.5), parameterization="standard")
    p = init_params(spec, (5, 4, 2), 6, seed=9)
    rng = np.random.default_rng(9)
    np.testing.assert_allclose(p.weights[0], rng.standard_normal((6, 3, 2, 2)) * 1.3 / math.sqrt(12))
    np.testing.assert_allclose(p.biases[0], rng.standard_normal(6) * 0.2)
    np.testing.assert_allclose(p.weights[1], rng.standard_normal((6, 6)) * 1.1 / math.sqrt(6))
    np.testing.assert_allclose(p.weights[2], rng.standard_normal((6, 1, 1, 6)) * 0.7 / math.sqrt(6))
    np.testing.assert_allclose(p.weights[3], rng.standard_normal((1, 120)) * 2.0 / math.sqrt(120))
    assert p.biases[1] is None and p.biases[2] is None
    assert parameter_count(spec, (5, 4, 2), 6) == flatten(p).size == 72 + 6 + 36 + 36 + 120 + 1


@pytest.mark.parametrize(
    ("spec", "shape", "match"),
    [
        (net(Conv((3, 3)), Flatten(), Dense()), (4,), r"layers\[0\]: conv needs inputs with spatial axes"),
        (net(Conv((6, 1)), Flatten(), Dense()), (5, 4, 2), r"layers\[0\].*does not fit"),
        (net(Conv((3,)), Flatten(), Dense()), (5, 4, 2), r"layers\[0\].*1 window entries"),
        (net(A("relu"), Branches(((Dense(),), ())), Flatten(), Dense()), (5, 4, 2), r"layers\[1\]: branch 1"),
        (net(Conv((3, 3)), Dense()), (5, 4, 2), "ends with spatial axes"),
        (net(Conv((3, 3)), GlobalAvgPool(), Dense(), A("relu")), (5, 4, 2), "last layer"),
        (net(Conv((3, 3)), GlobalAvgPool(), Dense(), A("cube"), Dense()), (5, 4, 2), "unknown activation"),
        (TwoLayerRelu(), (5, 2), "2-D|n × d"),
    ],
)
def test_networks_that_do_not_fit_raise_value_error_naming_the_layer(spec, shape, match):
    with pytest.raises(ValueError, match=match):
        empirical_kernels(spec, np.ones((2, *shape)), width=4, seed=0)
    with pytest.raises(ValueError, match=match):
        working_memory_entries(spec, 2, 2, shape, 4)


def test_input_checks():
    spec = FD_SPECS["residual_sum"]
    with pytest.raises(ValueError, match="expected"):
        empirical_kernels(spec, images(2), images(2, shape=(5, 5, 2)), width=4, seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        empirical_kernels(spec, np.full((2, 5, 4, 2), np.nan), width=4, seed=0)
    with pytest.raises(ValueError, match="4-D"):
        empirical_kernels(spec, np.ones((2, 1, 5, 4, 2)), width=4, seed=0)


# ------------------------------------------------------------------------------ memory and work


@pytest.mark.parametrize(
    ("spec", "shape", "width", "n"),
    [
        (FD_SPECS["residual_sum"], (8, 8, 3), 32, 12),
        (FD_SPECS["layer_norm_pools"], (8, 8, 3), 24, 10),
        (net(Conv((3, 3), None, "SAME", 1.4), A("relu"), Conv((3, 3), (2, 2), "SAME"), A("relu"), Flatten(),
             Dense()), (12, 12, 3), 48, 8),
    ],
)
def test_working_memory_estimate_bounds_the_measured_peak(spec, shape, width, n):
    x = images(n, shape)
    estimate = working_memory_entries(spec, n, n, shape, width) * 8
    tracemalloc.start()
    try:
        empirical_kernels(spec, x, x, width=width, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate, (peak, estimate)
    assert estimate < 20 * peak  # and not wildly above it


def test_work_estimates_grow_with_the_problem():
    spec = FD_SPECS["residual_sum"]
    base = working_memory_entries(spec, 16, 16, (8, 8, 3), 32)
    assert working_memory_entries(spec, 32, 32, (8, 8, 3), 32) > base
    assert working_memory_entries(spec, 16, 16, (8, 8, 3), 64) > base
    assert working_memory_entries(spec, 16, 16, (16, 16, 3), 32) > base
    work = lambda **kw: lazy_training_work(spec, kw.get("n", 16), 4, kw.get("shape", (8, 8, 3)),
                                           kw.get("width", 32), kw.get("steps", 10), 3)
    assert work(n=32) > work() and work(width=64) > work() and work(shape=(16, 16, 3)) > work()
    assert work(steps=30) - work(steps=20) == work(steps=20) - work(steps=10) > 0
    assert lazy_training_memory_entries(spec, 16, 4, (8, 8, 3), 32) > parameter_count(spec, (8, 8, 3), 32)


# ------------------------------------------------------------------------------ lazy training


def test_lazy_training_of_a_conv_net_is_first_order_in_its_ntk():
    spec = net(Conv((3, 3), None, "SAME", 1.4, 0.1), A("relu"), AvgPool((2, 2)), Flatten(), Dense(1.0, 0.1))
    x, xt = images(6, (4, 4, 2)), images(3, (4, 4, 2), seed=1)
    y = np.sin(x.sum(axis=(1, 2, 3)))
    lr = 1e-4
    res = lazy_training(spec, x, y, width=16, seed=3, steps=[0, 1], learning_rate=lr, x_test=xt)
    params = init_params(spec, x.shape[1:], 16, 3)
    f0 = apply(spec, params, x)
    k = kernels_from_params(spec, params, x)["ntk"]
    np.testing.assert_allclose(res.train_predictions[0], f0, rtol=1e-12)
    step = res.train_predictions[1] - f0
    np.testing.assert_allclose(step, -lr / 6 * k @ (f0 - y), rtol=1e-3)
    assert res.test_predictions.shape == (2, 3) and res.parameter_count == parameter_count(spec, (4, 4, 2), 16)


# ------------------------------------------------------------------------------ convergence


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize(
    "spec",
    [
        net(Conv((3, 3), None, "SAME", 1.4, 0.1), A("relu"), Conv((3, 3), (2, 2), "CIRCULAR", 1.3, 0.1), A("relu"),
            Flatten(), Dense(1.0, 0.1)),
        net(Conv((3, 3), None, "SAME", 1.3, 0.1),
            Branches(((A("relu"), Conv((3, 3), None, "SAME", 1.2, 0.1)), ())),
            Branches(((A("relu"), Conv((3, 3), None, "SAME", 1.2, 0.1)), ())),
            A("relu"), GlobalAvgPool(), Dense(1.0, 0.1)),
    ],
    ids=["conv", "residual"],
)
def test_empirical_ntk_converges_like_inverse_root_width(spec):
    """RMS over seeds of ‖K_m − K_∞‖_F/‖K_∞‖_F: a log-log slope ≈ −1/2 (fluctuations ∝ 1/√m)."""
    x = images(5, (4, 4, 2), seed=7)
    ref = gram(spec, x)
    widths = [16, 64, 256, 1024]
    rms = []
    for m in widths:
        errs = [[_rel(k[o], ref[o]) for o in ("ntk", "nngp")]
                for k in (empirical_kernels(spec, x, width=m, seed=s) for s in range(6))]
        rms.append(np.sqrt(np.mean(np.square(errs), axis=0)))
    rms = np.array(rms)  # widths × (ntk, nngp)
    for col in range(2):
        slope = np.polyfit(np.log(widths), np.log(rms[:, col]), 1)[0]
        assert -0.8 < slope < -0.3, (slope, rms)
        assert rms[0, col] > 3 * rms[-1, col], rms
    assert rms[-1, 0] < 0.1, rms
