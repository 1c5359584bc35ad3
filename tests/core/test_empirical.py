"""Tests for core.empirical: exact empirical NTK/NNGP of finite networks.

References are independent of the code under test: per-example Jacobians by central finite
differences of ``apply``, a hand-written two-layer Jacobian, and closed-form infinite-width
kernels written here (the contract's two_layer_relu formula, the ReLU arc-cosine recursion).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.empirical import (
    add_scaled,
    apply,
    empirical_kernels,
    flatten,
    gradients,
    init_params,
    kernels_from_params,
    parameter_count,
    params_distance,
    params_norm,
    unflatten,
    working_memory_entries,
)
from core.empirical.activations import ACTIVATION_NAMES, dphi, phi
from core.kernels.spec import Activation, Dense, Network, TwoLayerRelu, layer_widths_applied

A = Activation


def net(*layers, parameterization="ntk"):
    return Network(tuple(layers), parameterization)


# --------------------------------------------------------------------------- references


def fd_jacobian(spec, params, x, eps=1e-6):
    """Per-example Jacobian ∂f(x_i)/∂θ_j (n × P) by central differences of ``apply``."""
    theta = flatten(params)
    jac = np.empty((x.shape[0], theta.size))
    for j in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[j] += eps
        tm[j] -= eps
        jac[:, j] = (
            apply(spec, unflatten(params, tp), x)
            - apply(spec, unflatten(params, tm), x)
        ) / (2 * eps)
    return jac


def _angle(q11, q22, q12):
    return np.arctan2(np.sqrt(np.maximum(np.outer(q11, q22) - q12**2, 0.0)), q12)


def two_layer_relu_infinite(x1, x2):
    """The contract's closed form: ntk_a = <x,x'>(π−θ)/2π, ntk_b = |x||x'|((π−θ)cosθ + sinθ)/2π."""
    n1, n2 = np.sum(x1**2, 1), np.sum(x2**2, 1)
    dot = x1 @ x2.T
    th = _angle(n1, n2, dot)
    a = dot * (np.pi - th) / (2 * np.pi)
    b = (
        np.sqrt(np.outer(n1, n2))
        * ((np.pi - th) * np.cos(th) + np.sin(th))
        / (2 * np.pi)
    )
    return {"ntk_a": a, "ntk_b": b, "nngp": b, "ntk": a + b}


def relu_network_infinite(x1, x2, layers, parameterization="ntk", width=None):
    """Arc-cosine recursion for Dense/ReLU networks (neural-tangents conventions).

    Standard parameterization: ntk' = fan_in·nngp + w²·ntk + [bias], fan_in = d, then ``width``.
    """
    d = x1.shape[1]
    q11, q22, q12 = np.sum(x1**2, 1) / d, np.sum(x2**2, 1) / d, x1 @ x2.T / d
    ntk = np.zeros_like(q12)
    fan_in = d
    for layer in layers:
        if isinstance(layer, Dense):
            w2, b2 = layer.w_std**2, (layer.b_std or 0.0) ** 2
            if parameterization == "ntk":
                ntk = w2 * q12 + b2 + w2 * ntk
            else:
                ntk = (
                    fan_in * q12 + w2 * ntk + (1.0 if layer.b_std is not None else 0.0)
                )
                fan_in = width
            q11, q22, q12 = w2 * q11 + b2, w2 * q22 + b2, w2 * q12 + b2
        else:
            assert layer.name == "relu"
            th = _angle(q11, q22, q12)
            q12 = (
                np.sqrt(np.outer(q11, q22))
                * (np.sin(th) + (np.pi - th) * np.cos(th))
                / (2 * np.pi)
            )
            ntk = ntk * (np.pi - th) / (2 * np.pi)
            q11, q22 = q11 / 2, q22 / 2
    return {"nngp": q12, "ntk": ntk}


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    return rng.standard_normal((5, 3)), rng.standard_normal((4, 3))


# --------------------------------------------------------------------------- activations


def test_activation_derivatives_match_finite_differences():
    x = np.linspace(-3.1, 3.1, 40)  # avoids 0
    for name in ACTIVATION_NAMES:
        act = A(name, negative_slope=0.2)
        h = 1e-6
        fd = (phi(act, x + h) - phi(act, x - h)) / (2 * h)
        np.testing.assert_allclose(dphi(act, x), fd, atol=1e-6, err_msg=name)


def test_activation_values_and_kink_conventions():
    z = np.array([-2.0, 0.0, 1.5])
    assert np.array_equal(dphi(A("relu"), z), [0, 0, 1])
    assert np.array_equal(dphi(A("sign"), z), [0, 0, 0])
    assert np.array_equal(phi(A("sign"), z), [-1, 0, 1])
    assert np.array_equal(dphi(A("abs"), z), [-1, 0, 1])
    np.testing.assert_allclose(phi(A("leaky_relu", -0.5), z), [1.0, 0, 1.5])
    np.testing.assert_allclose(
        phi(A("gelu"), np.array([1.0])), [1.0 * 0.5 * (1 + math.erf(1 / math.sqrt(2)))]
    )
    np.testing.assert_allclose(
        phi(A("softplus"), np.array([0.0, 800.0])), [math.log(2), 800.0]
    )
    for name in ACTIVATION_NAMES:
        assert phi(A(name), z.astype(np.float32)).dtype == np.float32
        assert dphi(A(name), z.astype(np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="unknown activation"):
        phi(A("cube"), z)


# --------------------------------------------------------------------------- exactness

EXACT_SPECS = {
    "ntk_relu_bias": net(Dense(1.5, 0.3), A("relu"), Dense(0.8, 0.2)),
    "ntk_erf_tanh_depth2": net(
        Dense(1.2), A("erf"), Dense(1.0, 0.5), A("tanh"), Dense(0.7)
    ),
    "ntk_depth3_mixed": net(
        Dense(1.1, 0.1),
        A("gelu"),
        Dense(0.9, 0.2),
        A("identity"),
        Dense(1.3, 0.0),
        A("sign"),
        Dense(1.0, 0.4),
    ),
    "ntk_no_hidden": net(Dense(1.3, 0.5)),
    "ntk_input_act_linear_hidden": net(
        A("tanh"), Dense(1.0, 0.2), Dense(1.2), A("leaky_relu", 0.1), Dense(1.0)
    ),
    "ntk_misc": net(
        Dense(1.0, 0.1), A("sin"), A("abs"), Dense(1.0), A("swish"), Dense(1.0, 0.1)
    ),
    "ntk_smooth": net(
        Dense(1.0), A("sigmoid"), Dense(1.0, 0.3), A("softplus"), Dense(1.0)
    ),
    "std_tanh_zero_bias": net(
        Dense(1.4, 0.0), A("tanh"), Dense(1.0, 0.3), parameterization="standard"
    ),
    "std_relu_erf_depth2": net(
        Dense(1.1, 0.2),
        A("relu"),
        Dense(0.9),
        A("erf"),
        Dense(1.0, 0.0),
        parameterization="standard",
    ),
    "std_gelu_nobias": net(
        Dense(1.0), A("gelu"), Dense(1.0), parameterization="standard"
    ),
    "two_layer_relu": TwoLayerRelu(),
}


@pytest.mark.parametrize("name", list(EXACT_SPECS))
def test_empirical_ntk_equals_finite_difference_jacobian(name, data):
    spec = EXACT_SPECS[name]
    x1, x2 = data
    width, seed = 5, 7
    params = init_params(spec, 3, width, seed)
    j1, j2 = fd_jacobian(spec, params, x1), fd_jacobian(spec, params, x2)
    got = empirical_kernels(spec, x1, x2, width=width, seed=seed)
    got_sym = empirical_kernels(spec, x1, width=width, seed=seed)
    scale = np.abs(j1 @ j1.T).max()
    np.testing.assert_allclose(got["ntk"], j1 @ j2.T, atol=1e-7 * scale, rtol=1e-6)
    np.testing.assert_allclose(got_sym["ntk"], j1 @ j1.T, atol=1e-7 * scale, rtol=1e-6)
    # the readout (last dense) block of θ is last in the flat vector
    last_w, last_b = params.weights[-1], params.biases[-1]
    n_last = last_w.size + (0 if last_b is None else last_b.size)
    r1, r2 = j1[:, -n_last:], j2[:, -n_last:]
    if isinstance(spec, TwoLayerRelu):
        np.testing.assert_allclose(
            got["ntk_b"], r1 @ r2.T, atol=1e-7 * scale, rtol=1e-6
        )
        np.testing.assert_allclose(got["nngp"], got["ntk_b"])
        a1, a2 = j1[:, : params.weights[0].size], j2[:, : params.weights[0].size]
        np.testing.assert_allclose(
            got["ntk_a"], a1 @ a2.T, atol=1e-7 * scale, rtol=1e-6
        )
    elif spec.parameterization == "ntk":  # nngp = the readout parameters' contribution
        np.testing.assert_allclose(got["nngp"], r1 @ r2.T, atol=1e-7 * scale, rtol=1e-6)
    else:  # standard: ∂f/∂W_L = U (the readout input), nngp = (w²/fan_in) UUᵀ + b²
        last = spec.layers[-1]
        fan_in = last_w.shape[1]
        start = j1.shape[1] - n_last
        u1, u2 = j1[:, start : start + fan_in], j2[:, start : start + fan_in]
        want = last.w_std**2 / fan_in * (u1 @ u2.T) + (last.b_std or 0.0) ** 2
        np.testing.assert_allclose(got["nngp"], want, atol=1e-7 * scale, rtol=1e-6)


def test_two_layer_relu_hand_written_jacobian(data):
    """The lecture's gradients: ∇a_i f = b_i relu'(a_iᵀx) x/√m, ∇b_i f = relu(a_iᵀx)/√m."""
    x1, x2 = data
    m = 50
    params = init_params(TwoLayerRelu(), 3, m, seed=3)
    a, b = params.weights[0], params.weights[1][0]

    def jac(x):
        z = x @ a.T
        ga = (b * (z > 0))[:, :, None] * x[:, None, :] / math.sqrt(m)
        gb = np.maximum(z, 0) / math.sqrt(m)
        return ga.reshape(len(x), -1), gb

    (ga1, gb1), (ga2, gb2) = jac(x1), jac(x2)
    got = empirical_kernels(TwoLayerRelu(), x1, x2, width=m, seed=3)
    np.testing.assert_allclose(got["ntk_a"], ga1 @ ga2.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["ntk_b"], gb1 @ gb2.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        got["ntk"], ga1 @ ga2.T + gb1 @ gb2.T, rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        apply(TwoLayerRelu(), params, x1), np.maximum(x1 @ a.T, 0) @ b / math.sqrt(m)
    )


@pytest.mark.parametrize(
    "spec",
    [EXACT_SPECS["ntk_relu_bias"], EXACT_SPECS["std_tanh_zero_bias"], TwoLayerRelu()],
)
def test_chunked_two_layer_path_is_chunk_independent(spec, data):
    x1, x2 = data
    params = init_params(spec, 3, 37, seed=0)
    for x_b in (None, x2):
        ref = kernels_from_params(spec, params, x1, x_b, chunk=37)
        for chunk in (1, 5, 16):
            got = kernels_from_params(spec, params, x1, x_b, chunk=chunk)
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "name", ["ntk_relu_bias", "std_relu_erf_depth2", "two_layer_relu", "ntk_no_hidden"]
)
def test_gradients_match_finite_differences(name, data):
    spec = EXACT_SPECS[name]
    x1, _ = data
    params = init_params(spec, 3, 6, seed=11)
    r = np.linspace(-1.0, 2.0, x1.shape[0])
    want = fd_jacobian(spec, params, x1).T @ r
    got = gradients(spec, params, x1, r)
    np.testing.assert_allclose(flatten(got), want, rtol=1e-6, atol=1e-8)
    assert [g.shape for g in got.arrays()] == [p.shape for p in params.arrays()]


# --------------------------------------------------------------------------- convergence


def _mean_errors(spec, x, widths, seeds, infinite, names, **inf_kw):
    errs = {n: [] for n in names}
    for m in widths:
        ref = infinite(m)
        acc = {n: 0.0 for n in names}
        for s in seeds:
            got = empirical_kernels(spec, x, width=m, seed=s)
            for n in names:
                acc[n] += rel_err(got[n], ref[n]) / len(seeds)
        for n in names:
            errs[n].append(acc[n])
    return errs


def _assert_root_m_decay(errs, widths):
    for name, e in errs.items():
        assert e[0] > e[1] > e[2], (name, e)
        slope = math.log(e[-1] / e[0]) / math.log(widths[-1] / widths[0])
        assert -0.85 < slope < -0.3, (name, slope, e)


@pytest.fixture(scope="module")
def conv_x():
    rng = np.random.default_rng(99)
    x = rng.standard_normal((12, 4))
    x[0] = 0.0  # a zero-norm input stays finite
    return x


def test_two_layer_relu_converges_like_inverse_root_width(conv_x):
    widths = [64, 1024, 16384]
    ref = two_layer_relu_infinite(conv_x, conv_x)
    errs = _mean_errors(
        TwoLayerRelu(),
        conv_x,
        widths,
        range(4),
        lambda m: ref,
        ["ntk", "ntk_a", "ntk_b"],
    )
    _assert_root_m_decay(errs, widths)
    assert errs["ntk"][-1] < 0.05


def test_relu_network_ntk_param_converges(conv_x):
    widths = [64, 1024, 16384]
    layers = (Dense(1.3, 0.2), A("relu"), Dense(0.9, 0.1))
    ref = relu_network_infinite(conv_x, conv_x, layers)
    errs = _mean_errors(
        net(*layers), conv_x, widths, range(4), lambda m: ref, ["ntk", "nngp"]
    )
    _assert_root_m_decay(errs, widths)


def test_relu_network_standard_param_converges(conv_x):
    widths = [64, 1024, 16384]
    layers = (Dense(1.0, 0.3), A("relu"), Dense(1.2, 0.0))
    errs = _mean_errors(
        net(*layers, parameterization="standard"),
        conv_x,
        widths,
        range(4),
        lambda m: relu_network_infinite(conv_x, conv_x, layers, "standard", m),
        ["ntk", "nngp"],
    )
    _assert_root_m_decay(errs, widths)


def test_deep_relu_network_converges(conv_x):
    widths = [32, 128, 512]
    layers = (Dense(1.2, 0.1), A("relu"), Dense(1.4, 0.1), A("relu"), Dense(1.0, 0.2))
    ref = relu_network_infinite(conv_x, conv_x, layers)
    errs = _mean_errors(
        net(*layers), conv_x, widths, range(4), lambda m: ref, ["ntk", "nngp"]
    )
    _assert_root_m_decay(errs, widths)


def test_matches_core_kernels_gram_when_available(conv_x):
    from core.kernels import gram

    m = 16384
    specs = [
        TwoLayerRelu(),
        net(Dense(1.3, 0.2), A("relu"), Dense(0.9, 0.1)),
        net(Dense(1.0, 0.2), A("erf"), Dense(1.0), parameterization="standard"),
    ]
    cases = [(s, layer_widths_applied(s, m)) for s in specs]
    for emp_spec, inf_spec in cases:
        inf = gram(inf_spec, conv_x)
        errs = [
            rel_err(
                empirical_kernels(emp_spec, conv_x, width=m, seed=s)["ntk"], inf["ntk"]
            )
            for s in range(3)
        ]
        assert np.mean(errs) < 0.05, (emp_spec, errs)


# --------------------------------------------------------------------------- determinism, dtypes, API


def test_same_seed_same_network_regardless_of_inputs(data):
    spec = EXACT_SPECS["ntk_erf_tanh_depth2"]
    x1, x2 = data
    k1 = empirical_kernels(spec, x1, width=16, seed=5)
    again = empirical_kernels(spec, x1, width=16, seed=5)
    for k in k1:
        assert np.array_equal(k1[k], again[k])
    bigger = empirical_kernels(spec, np.vstack([x1, x2]), width=16, seed=5)
    for k in k1:
        np.testing.assert_allclose(bigger[k][:5, :5], k1[k], rtol=1e-12, atol=1e-14)
    other = empirical_kernels(spec, x1, width=16, seed=6)
    assert not np.allclose(other["ntk"], k1["ntk"])
    p, q = init_params(spec, 3, 16, 5), init_params(spec, 3, 16, 5)
    assert np.array_equal(flatten(p), flatten(q))


@pytest.mark.parametrize(
    "spec",
    [TwoLayerRelu(), EXACT_SPECS["ntk_relu_bias"], EXACT_SPECS["std_relu_erf_depth2"]],
)
def test_x2_given_equals_x2_none_and_symmetry(spec, data):
    x1, _ = data
    sym = empirical_kernels(spec, x1, width=64, seed=2)
    full = empirical_kernels(spec, x1, x1, width=64, seed=2)
    for k in sym:
        assert np.array_equal(sym[k], sym[k].T)
        np.testing.assert_allclose(full[k], sym[k], rtol=1e-12, atol=1e-12)
        assert np.linalg.eigvalsh(sym[k]).min() > -1e-10 * np.abs(sym[k]).max()


@pytest.mark.parametrize("spec", [TwoLayerRelu(), EXACT_SPECS["ntk_erf_tanh_depth2"]])
def test_float32_output(spec, data):
    x1, x2 = data
    k32 = empirical_kernels(spec, x1, x2, width=256, seed=1, dtype=np.float32)
    k64 = empirical_kernels(spec, x1, x2, width=256, seed=1)
    assert set(k32) == set(k64)
    for k in k32:
        assert k32[k].dtype == np.float32 and k32[k].shape == (5, 4)
        assert rel_err(k32[k].astype(np.float64), k64[k]) < 1e-5
    assert init_params(spec, 3, 8, 0, np.float32).dtype == np.float32


def test_outputs_selection_and_names(data):
    x1, x2 = data
    assert list(empirical_kernels(TwoLayerRelu(), x1, width=8, seed=0)) == [
        "ntk",
        "ntk_a",
        "ntk_b",
        "nngp",
    ]
    spec = EXACT_SPECS["ntk_relu_bias"]
    assert list(empirical_kernels(spec, x1, width=8, seed=0)) == ["nngp", "ntk"]
    only = empirical_kernels(spec, x1, x2, width=8, seed=0, outputs=["nngp"])
    assert list(only) == ["nngp"]
    np.testing.assert_allclose(
        only["nngp"], empirical_kernels(spec, x1, x2, width=8, seed=0)["nngp"]
    )
    deep = EXACT_SPECS["ntk_erf_tanh_depth2"]
    np.testing.assert_allclose(
        empirical_kernels(deep, x1, width=8, seed=0, outputs=["nngp"])["nngp"],
        empirical_kernels(deep, x1, width=8, seed=0)["nngp"],
    )
    with pytest.raises(ValueError, match="unknown output"):
        empirical_kernels(spec, x1, width=8, seed=0, outputs=["ntk_a"])


@pytest.mark.parametrize(
    ("spec", "x1", "x2", "match"),
    [
        (net(A("relu")), np.ones((2, 3)), None, "at least one dense"),
        (net(Dense(), A("relu")), np.ones((2, 3)), None, "last layer"),
        (net(Dense(), A("cube"), Dense()), np.ones((2, 3)), None, "unknown activation"),
        (TwoLayerRelu(), np.ones((2, 3)), np.ones((2, 4)), "features"),
        (TwoLayerRelu(), np.array([[1.0, np.nan]]), None, "non-finite"),
        (TwoLayerRelu(), np.ones(3), None, "2-D"),
    ],
)
def test_invalid_requests_raise_value_error(spec, x1, x2, match):
    with pytest.raises(ValueError, match=match):
        empirical_kernels(spec, x1, x2, width=4, seed=0)


def test_invalid_width_and_dtype():
    with pytest.raises(ValueError, match="width"):
        empirical_kernels(TwoLayerRelu(), np.ones((2, 2)), width=0, seed=0)
    with pytest.raises(ValueError, match="dtype"):
        empirical_kernels(
            TwoLayerRelu(), np.ones((2, 2)), width=4, seed=0, dtype=np.int64
        )


def test_parameter_count_memory_estimate_and_param_helpers():
    spec = EXACT_SPECS["ntk_depth3_mixed"]
    params = init_params(spec, 3, 10, seed=0)
    assert (
        parameter_count(spec, 3, 10)
        == flatten(params).size
        == (3 * 10 + 10) + (10 * 10 + 10) + (10 * 10 + 10) + 11
    )
    assert parameter_count(TwoLayerRelu(), 7, 100) == 800
    assert (
        parameter_count(
            net(Dense(), A("relu"), Dense(), parameterization="standard"), 7, 100
        )
        == 800
    )
    back = unflatten(params, flatten(params))
    assert np.array_equal(flatten(back), flatten(params))
    assert params_norm(params) == pytest.approx(np.linalg.norm(flatten(params)))
    moved = add_scaled(params, params, -0.5)
    assert params_distance(moved, params) == pytest.approx(0.5 * params_norm(params))
    small = working_memory_entries(TwoLayerRelu(), 300, 300, 10, 2**10)
    big = working_memory_entries(TwoLayerRelu(), 300, 300, 10, 2**18)
    assert parameter_count(TwoLayerRelu(), 10, 2**18) < big and small < big
    assert (
        working_memory_entries(spec, 10, 10, 3, 2**12) > 2 * 2**24
    )  # two m×m hidden weights


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    act=st.sampled_from(ACTIVATION_NAMES),
    depth=st.integers(1, 3),
    b_std=st.one_of(st.none(), st.floats(0.0, 1.0)),
    parameterization=st.sampled_from(["ntk", "standard"]),
)
def test_kernels_are_symmetric_psd(seed, act, depth, b_std, parameterization):
    layers = []
    for _ in range(depth):
        layers += [Dense(1.2, b_std), A(act)]
    spec = net(*layers, Dense(1.0, b_std), parameterization=parameterization)
    x = np.random.default_rng(seed).standard_normal((6, 3))
    out = empirical_kernels(spec, x, width=12, seed=seed)
    for k in out.values():
        assert np.all(np.isfinite(k)) and np.array_equal(k, k.T)
        assert np.linalg.eigvalsh(k).min() > -1e-9 * max(1.0, np.abs(k).max())


def test_parameters_are_the_seeded_standard_normal_stream():
    """θ₀ is default_rng(seed).standard_normal, layer by layer (weight, then bias), scaled."""
    m, d = 3000, 5
    spec = net(Dense(1.3, 0.2), A("relu"), Dense(2.0, 0.5), parameterization="standard")
    p = init_params(spec, d, m, seed=9)
    rng = np.random.default_rng(9)
    np.testing.assert_allclose(
        p.weights[0], rng.standard_normal((m, d)) * 1.3 / math.sqrt(d), rtol=1e-15
    )
    np.testing.assert_allclose(p.biases[0], rng.standard_normal(m) * 0.2, rtol=1e-15)
    np.testing.assert_allclose(
        p.weights[1], rng.standard_normal((1, m)) * 2.0 / math.sqrt(m), rtol=1e-15
    )
    np.testing.assert_allclose(p.biases[1], rng.standard_normal(1) * 0.5, rtol=1e-15)
    p32 = init_params(spec, d, m, seed=9, dtype=np.float32)
    assert np.array_equal(p32.weights[0], p.weights[0].astype(np.float32))
