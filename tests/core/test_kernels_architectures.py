"""Monte Carlo checks of the infinite-width rules of every layer kind (``core.kernels.gram``).

The reference is independent of the rules: the average over many seeds of the exact empirical
NNGP and NTK of finite networks of the same spec (``core.empirical``, itself checked against
finite differences in ``test_empirical_architectures.py``).

Why the averages are unbiased. Most networks here apply every nonlinearity (and
``layer_norm``'s normalisation) to the output of the *first* dense/conv layer and only linear
layers (conv, dense, pooling, flatten, global pooling, merges of independent branches) after
it. The first layer's pre-activations are exactly Gaussian with the infinite-width covariance
at any width, every later random layer enters the kernels quadratically and independently, so
the expectation of the empirical kernels equals the infinite-width kernel exactly: the only
error is the Monte Carlo error, estimated from the seeds' spread. A test passes when every
entry is within ``Z_PASS`` standard errors; each test also checks that it would fail for a
deliberately wrong rule: the infinite kernel scaled by ``1 ± WRONG_FACTOR``, the biases'
variance dropped, and a neighbouring rule (another padding, stride, pooling or merge).
``layer_norm`` (its sample variance over ``width`` channels) and nonlinearities after a second
random layer have an ``O(1/width)`` bias: those tests use a larger width, where the bias is
well below the Monte Carlo error.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.empirical import empirical_kernels
from core.kernels import gram
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
    layer_widths_applied,
)

A = Activation
#: Largest allowed |mean − infinite| / standard error over the kernel entries.
Z_PASS = 4.5
#: A rule off by this relative factor must be rejected.
WRONG_FACTOR = 0.1
OUTPUTS = ("nngp", "ntk")


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


def _images(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *shape))
    return x * np.linspace(0.6, 1.4, n).reshape(-1, *([1] * len(shape)))  # unequal norms


X2D = _images((5, 4, 2))
X1D = _images((7, 2))
XFC = _images((3,))


def monte_carlo(spec, x, width, seeds):
    """Mean and standard error over seeds of the empirical kernels (upper triangles)."""
    iu = np.triu_indices(x.shape[0])
    samples = {o: [] for o in OUTPUTS}
    for s in range(seeds):
        k = empirical_kernels(spec, x, width=width, seed=s)
        for o in OUTPUTS:
            samples[o].append(k[o][iu])
    stats = {}
    for o in OUTPUTS:
        a = np.array(samples[o])
        stats[o] = (a.mean(axis=0), a.std(axis=0, ddof=1) / np.sqrt(seeds))
    return stats


def z_max(stats, kernel, name):
    mean, se = stats[name]
    iu = np.triu_indices(kernel.shape[0])
    return float(np.max(np.abs(mean - kernel[iu]) / np.maximum(se, 1e-12 * np.abs(mean).max())))


def infinite(spec, x, width):
    return gram(layer_widths_applied(spec, width), x)


def check(spec, x, width=128, seeds=100, wrong=()):
    """The infinite kernel agrees with the Monte Carlo mean; wrong rules do not."""
    stats = monte_carlo(spec, x, width, seeds)
    inf = infinite(spec, x, width)
    for o in OUTPUTS:
        z = z_max(stats, inf[o], o)
        assert z < Z_PASS, (o, z)
        for factor in (1 - WRONG_FACTOR, 1 + WRONG_FACTOR):
            assert z_max(stats, factor * inf[o], o) > Z_PASS, (o, factor)
    for other in wrong:
        bad = infinite(other, x, width)
        assert max(z_max(stats, bad[o], o) for o in OUTPUTS) > Z_PASS, other


def net(*layers, parameterization="ntk"):
    return Network(tuple(layers), parameterization)


VARIANTS = [("ntk", 0.2), ("ntk", None), ("standard", 0.3), ("standard", None)]
VARIANT_IDS = ["ntk-bias", "ntk-nobias", "standard-bias", "standard-nobias"]


def _conv_same(b, padding="SAME"):
    return (Conv((3, 3), None, "SAME", 1.3, b), A("relu"), Conv((3, 3), None, padding, 1.1, b), Flatten(),
            Dense(1.0, b))


def _conv_valid_stride(b, strides=(2, 1)):
    return (Conv((3, 2), strides, "VALID", 1.3, b), A("relu"), Conv((2, 2), None, "VALID", 1.1, b), Flatten(),
            Dense(1.0, b))


def _conv_circular_stride(b, padding="CIRCULAR"):
    return (Conv((3, 3), None, padding, 1.3, b), A("erf"), Conv((3, 3), (2, 2), padding, 1.2, b), GlobalAvgPool(),
            Dense(1.0, b))


def _conv_1d(b, padding="SAME"):
    return (Conv((3,), None, padding, 1.3, b), A("relu"), Conv((2,), (2,), "VALID", 1.0, b), Flatten(),
            Dense(1.0, b))


def _avg_pool(b, padding="SAME"):
    return (Conv((2, 2), None, "SAME", 1.3, b), A("relu"), AvgPool((2, 2), None, padding), Flatten(),
            Dense(1.0, b))


def _sum_pool(b, padding="CIRCULAR"):
    return (Conv((2, 2), None, "VALID", 1.3, b), A("gelu"), SumPool((2, 2), (1, 1), padding), GlobalSumPool(),
            Dense(1.0, b))


def _global_sum(b, pool=GlobalSumPool):
    return (Conv((3, 1), None, "SAME", 1.2, b), A("abs"), pool(), Dense(1.0, b))


def _flatten(b, reduce=Flatten):
    return (Conv((2, 3), None, "CIRCULAR", 1.2, b), A("erf"), reduce(), Dense(1.0, b))


def _dense_on_positions(b, pool=AvgPool):
    return (Dense(1.4, b), A("relu"), Dense(1.1, b), pool((2, 2), None, "SAME"), Flatten(), Dense(1.0, b))


def _residual(b, merge="sum"):
    return (Conv((3, 3), None, "SAME", 1.2, b), Branches(((A("relu"), Conv((3, 3), None, "SAME", 1.0, b)), ()), merge),
            GlobalAvgPool(), Dense(1.0, b))


def _product(b, merge="product"):
    return (Branches(((Conv((2, 2), None, "SAME", 1.0, b),), (Conv((1, 1), None, "VALID", 1.2, b),),
                      (Conv((3, 3), None, "CIRCULAR", 0.8, b),)), merge),
            GlobalSumPool(), Dense(1.0, b))


def _pool_then_activation(b, padding="SAME"):
    """Pooling keeps Gaussianity: the activation reads the pooled per-position variances."""
    return (Conv((3, 3), None, "SAME", 1.3, b), AvgPool((2, 2), (1, 1), padding), A("relu"),
            Conv((2, 2), None, "VALID", 1.0, b), Flatten(), Dense(1.0, b))


def _sum_then_activation(b, both=True):
    branches = ((Conv((3, 3), None, "SAME", 1.3, b),), (Conv((1, 1), None, "SAME", 1.0, None),))
    return (Branches(branches if both else branches[:1], "sum"), A("erf"), GlobalAvgPool(), Dense(1.0, b))


CASES = {
    # name: (builder, input, wrong variants as builder keyword arguments[, width, seeds])
    "conv_same": (_conv_same, X2D, [{"padding": "CIRCULAR"}]),
    "conv_valid_stride": (_conv_valid_stride, X2D, [{"strides": (1, 2)}]),
    "conv_circular_stride": (_conv_circular_stride, X2D, [{"padding": "SAME"}]),
    "conv_1d": (_conv_1d, X1D, [{"padding": "CIRCULAR"}]),
    "avg_pool": (_avg_pool, X2D, [{"padding": "CIRCULAR"}]),
    "sum_pool": (_sum_pool, X2D, [{"padding": "SAME"}]),
    "global_sum_pool": (_global_sum, X2D, [{"pool": Flatten}]),
    "flatten": (_flatten, X2D, [{"reduce": GlobalAvgPool}]),
    "dense_on_positions": (_dense_on_positions, X2D, [{"pool": SumPool}]),
    "residual_sum": (_residual, X2D, [{"merge": "product"}]),
    "product": (_product, X2D, [{"merge": "sum"}], 512, 120),  # products of Gaussians: heavier tails
    "pool_then_activation": (_pool_then_activation, X2D, [{"padding": "CIRCULAR"}]),
    "sum_then_activation": (_sum_then_activation, X2D, [{"both": False}]),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(("parameterization", "b"), VARIANTS, ids=VARIANT_IDS)
def test_rule_matches_monte_carlo(name, parameterization, b):
    builder, x, wrong, *sizes = CASES[name]
    spec = net(*builder(b), parameterization=parameterization)
    wrong_specs = [net(*builder(b, **kw), parameterization=parameterization) for kw in wrong]
    if b is not None:  # the biases' variance forgotten
        wrong_specs.append(net(*builder(0.0), parameterization=parameterization))
    check(spec, x, *sizes, wrong=wrong_specs)


@pytest.mark.parametrize(("parameterization", "b"), VARIANTS, ids=VARIANT_IDS)
def test_layer_norm_matches_monte_carlo(parameterization, b):
    """Normalising by the sample variance of ``width`` channels is biased by O(1/width): width 256."""
    spec = net(Conv((3, 3), None, "SAME", 1.5, b), LayerNorm(), A("relu"), Conv((2, 2), None, "VALID", 1.0, b),
               Flatten(), Dense(1.0, b), parameterization=parameterization)
    no_norm = net(Conv((3, 3), None, "SAME", 1.5, b), A("relu"), Conv((2, 2), None, "VALID", 1.0, b), Flatten(),
                  Dense(1.0, b), parameterization=parameterization)
    check(spec, X2D, width=256, seeds=60, wrong=[no_norm])


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs", "erf", "sign", "gelu", "sin", "identity", "tanh",
                                  "softplus"])
def test_every_activation_in_a_conv_net(name):
    layers = (Conv((3, 3), None, "SAME", 1.4, 0.2), A(name, 0.3), Conv((2, 2), (2, 2), "SAME", 1.1, 0.1),
              Flatten(), Dense(1.0, 0.1))
    check(net(*layers), X2D)


def test_fully_connected_layer_norm_and_residual_blocks():
    """Fully connected networks with layer_norm and residual branches (n × d inputs)."""
    spec = net(Dense(1.4, 0.1), LayerNorm(), Branches(((A("relu"), Dense(1.2, 0.1)), ())), Dense(1.0, 0.1))
    check(spec, XFC, width=256, seeds=80)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_nonlinearities_after_a_second_random_layer(parameterization):
    """Activations on a spatial state whose variances come from the variance tape (O(1/width) bias)."""
    spec = net(Conv((3, 3), None, "SAME", 1.3, 0.2), A("relu"), Conv((3, 3), (2, 2), "SAME", 1.4, 0.1), A("erf"),
               AvgPool((2, 2), None, "SAME"), Flatten(), Dense(1.0, 0.1),
               parameterization=parameterization)
    check(spec, X2D, width=128, seeds=60)
