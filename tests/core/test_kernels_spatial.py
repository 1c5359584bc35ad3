"""The general engine: spatial linear maps against brute-force definitions, and engine invariants.

References here are written independently of ``core.kernels.spatial``: explicit loops over
output positions and filter offsets (conv, pooling), and the defining sums of flatten and global
pooling. Whole networks are checked against neural-tangents in
``tests/api/test_neural_tangents_fixtures.py`` and against finite networks (Monte Carlo) in
``test_kernels_architectures.py``; the invariants below guard the engine's bookkeeping (blocks,
threads, the symmetric diagonal, the compiled passes) against its own plain path.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

import core.kernels.engine as engine
from core.kernels import gram, gram_diagonal
from core.kernels import spec as S
from core.kernels.registry import layer_from_json
from core.kernels.shapes import trace, window_geometry
from core.kernels.spatial import conv_mean, flatten, global_pool, patches, pool

RNG = np.random.default_rng(7)
PADDINGS = ("VALID", "SAME", "CIRCULAR")
D, A = S.Dense, S.Activation


def _source(t: int, d: int, stride: int, lo: int, size: int, padding: str) -> int | None:
    src = t * stride + d - lo
    if padding == "CIRCULAR":
        return src % size
    return src if 0 <= src < size else None


def brute_conv(a: np.ndarray, f: tuple[int, int], s: tuple[int, int], padding: str) -> np.ndarray:
    """``out[i,h,w,j,g,v] = mean_{p,q} a[i, src(h,p), src(w,q), j, src(g,p), src(v,q)]`` (zero outside)."""
    b1, H, W, b2 = a.shape[:4]
    (ho, lh, _), (wo, lw, _) = window_geometry(H, f[0], s[0], padding), window_geometry(W, f[1], s[1], padding)
    out = np.zeros((b1, ho, wo, b2, ho, wo))
    for h, w, g, v in itertools.product(range(ho), range(wo), range(ho), range(wo)):
        for p, q in itertools.product(range(f[0]), range(f[1])):
            y, x = _source(h, p, s[0], lh, H, padding), _source(w, q, s[1], lw, W, padding)
            yy, xx = _source(g, p, s[0], lh, H, padding), _source(v, q, s[1], lw, W, padding)
            if None not in (y, x, yy, xx):
                out[:, h, w, :, g, v] += a[:, y, x, :, yy, xx]
    return out / (f[0] * f[1])


def brute_pool(a: np.ndarray, f: tuple[int, int], s: tuple[int, int], padding: str, average: bool) -> np.ndarray:
    """``out[t, t'] = Σ_{u ∈ win(t), u' ∈ win(t')} a[u, u']`` per example pair (÷ window² if average)."""
    b1, H, W, b2 = a.shape[:4]
    (ho, lh, _), (wo, lw, _) = window_geometry(H, f[0], s[0], padding), window_geometry(W, f[1], s[1], padding)

    def window(h: int, w: int) -> list[tuple[int, int]]:
        cells = [(_source(h, p, s[0], lh, H, padding), _source(w, q, s[1], lw, W, padding))
                 for p, q in itertools.product(range(f[0]), range(f[1]))]
        return [c for c in cells if None not in c]

    out = np.zeros((b1, ho, wo, b2, ho, wo))
    for h, w, g, v in itertools.product(range(ho), range(wo), range(ho), range(wo)):
        for (y, x), (yy, xx) in itertools.product(window(h, w), window(g, v)):
            out[:, h, w, :, g, v] += a[:, y, x, :, yy, xx]
    return out / (f[0] * f[1]) ** 2 if average else out


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize(("f", "s"), [((3, 3), (1, 1)), ((3, 2), (2, 1)), ((2, 3), (2, 3)), ((1, 1), (1, 2))])
def test_conv_mean_equals_its_definition(padding: str, f: tuple[int, int], s: tuple[int, int]) -> None:
    a = RNG.normal(size=(2, 5, 6, 3, 5, 6))
    np.testing.assert_allclose(conv_mean(a, 2, f, s, padding), brute_conv(a, f, s, padding), atol=1e-13)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize(("f", "s"), [((2, 2), (2, 2)), ((3, 2), (1, 2)), ((3, 3), (2, 2))])
def test_pool_equals_its_definition(padding: str, average: bool, f: tuple[int, int], s: tuple[int, int]) -> None:
    a = RNG.normal(size=(2, 6, 5, 2, 6, 5))
    np.testing.assert_allclose(pool(a, 2, f, s, padding, average), brute_pool(a, f, s, padding, average),
                               atol=1e-13)


def test_flatten_and_global_pool_definitions() -> None:
    a = RNG.normal(size=(2, 3, 4, 5, 3, 4))
    diag = np.array([[np.mean([a[i, h, w, j, h, w] for h in range(3) for w in range(4)]) for j in range(5)]
                     for i in range(2)])
    np.testing.assert_allclose(flatten(a, 2), diag, atol=1e-14)
    np.testing.assert_allclose(global_pool(a, 2, False), a.sum(axis=(1, 2, 4, 5)), atol=1e-12)
    np.testing.assert_allclose(global_pool(a, 2, True), a.mean(axis=(1, 2, 4, 5)), atol=1e-14)


@pytest.mark.parametrize("padding", PADDINGS)
def test_patches_give_the_filter_mean_of_the_input_covariance(padding: str) -> None:
    x, y = RNG.normal(size=(2, 5, 6, 3)), RNG.normal(size=(3, 5, 6, 3))
    cov = np.einsum("ihwc,jgvc->ihwjgv", x, y) / 3
    f, s = (3, 2), (2, 1)
    px, py = patches(x, f, s, padding), patches(y, f, s, padding)
    via_patches = np.einsum("ihwc,jgvc->ihwjgv", px, py) / px.shape[-1]
    np.testing.assert_allclose(via_patches, brute_conv(cov, f, s, padding), atol=1e-13)


CNN = S.Network((
    S.Conv((3, 3), None, "SAME", 1.3, 0.1), A("relu"), S.Conv((2, 2), (2, 1), "CIRCULAR", 1.2, 0.2), A("gelu"),
    S.AvgPool((2, 2), None, "SAME"), S.Conv((2, 2), None, "VALID", 1.1, 0.0), S.LayerNorm(0.1), A("erf"),
    S.Conv((1, 1), None, "VALID", 1.0, 0.1), S.Branches(((A("relu"), S.Conv((1, 1), None, "VALID", 1.0, 0.1)), ())),
    S.GlobalAvgPool(), D(1.0, 0.1),
))


def test_blocks_and_threads_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = RNG.normal(size=(5, 6, 6, 2)), RNG.normal(size=(3, 6, 6, 2))
    whole = engine.network_gram(CNN, x, y, True, entries=10**9)
    for threads in (1, 2):
        monkeypatch.setattr(engine, "THREADS", threads)
        tiled = engine.network_gram(CNN, x, y, True, entries=6**4)  # one pair per block
        np.testing.assert_allclose(tiled[0], whole[0], rtol=1e-13)
        np.testing.assert_allclose(tiled[1], whole[1], rtol=1e-13)


def test_symmetric_gram_is_exactly_symmetric_with_the_self_pass_diagonal() -> None:
    x = RNG.normal(size=(7, 6, 6, 2))
    out = gram(CNN, x)
    for name in ("nngp", "ntk"):
        assert np.array_equal(out[name], out[name].T)
        np.testing.assert_array_equal(np.diag(out[name]), gram_diagonal(CNN, x)[name])
        # a copy of x as x2 runs every pair through the pair pass: equal off the diagonal; on it
        # the copy's correlation 1 − O(ε) moves relu's angle by O(√ε) (hence the self pass there)
        paired = engine.network_gram(CNN, x, x.copy(), True)[name == "ntk"]
        off = ~np.eye(len(x), dtype=bool)
        np.testing.assert_allclose(out[name][off], paired[off], rtol=1e-12)
        np.testing.assert_allclose(np.diag(out[name]), np.diag(paired), rtol=1e-8)


def test_cross_gram_matches_the_joint_gram() -> None:
    x, y = RNG.normal(size=(4, 6, 6, 2)), RNG.normal(size=(3, 6, 6, 2))
    joint = gram(CNN, np.concatenate([x, y]))
    cross = gram(CNN, x, y)
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(cross[name], joint[name][:4, 4:], rtol=1e-10, atol=1e-13)


def test_one_spatial_axis_equals_two_with_a_unit_axis() -> None:
    seq = RNG.normal(size=(4, 9, 3))
    net1 = S.Network((S.Conv((3,), (2,), "SAME", 1.2, 0.1), A("relu"), S.SumPool((2,)), S.Flatten(), D(1.0)))
    net2 = S.Network((S.Conv((3, 1), (2, 1), "SAME", 1.2, 0.1), A("relu"), S.SumPool((2, 1)), S.Flatten(), D(1.0)))
    one, two = gram(net1, seq), gram(net2, seq[:, :, None, :])
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(one[name], two[name], rtol=1e-12)


FC_GRAPHS = [
    S.Network((D(1.4, 0.1), *[S.Branches(((A("relu"), D(1.4, 0.1)), ())) for _ in range(3)], A("relu"), D(1.0))),
    S.Network(tuple(layer for _ in range(3) for layer in (D(1.4, 0.1), S.LayerNorm(0.3), A("erf"))) + (D(1.0),)),
    S.Network((D(1.2, 0.1), S.Branches(((D(1.1, 0.2),), (D(0.9, 0.3), A("gelu"), D(1.0)), (D(1.0, 0.0),)), "product"),
               D(1.0), S.Branches(((A("relu"), D(1.0, 0.0)), (), (D(2.0),))), A("abs"), D(1.0, 0.1))),
    S.Network((D(1.2, 0.1, 7), S.Branches(((A("relu"), D(1.1, 0.2, 7)), ())), S.LayerNorm(), A("sin"), D(1.0, 0.0)),
              "standard"),
    S.Network((D(1.3, 0.2), S.Branches(((), (A("erf"), D(1.1, 0.2))), "product"), D(1.0, 0.1),
               S.Branches(((S.Branches(((D(0.8),), ())),), (D(1.2, 0.1),))), A("relu"), D(1.0))),
]


@pytest.mark.parametrize("spec", FC_GRAPHS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_compiled_fully_connected_graphs_equal_the_plain_engine(spec: S.Network, dtype: type) -> None:
    """Guards the compiled pass (branch stack, layer_norm scaling) against the vectorised rules."""
    x, y = RNG.normal(size=(40, 5)).astype(dtype), RNG.normal(size=(9, 5)).astype(dtype)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for other in (None, y):
        fast = gram(spec, x, other, dtype=dtype)
        plain = gram(spec, x, other, dtype=dtype, engine="reference")
        for name in ("nngp", "ntk"):
            np.testing.assert_allclose(fast[name], plain[name], rtol=tol, atol=tol * np.abs(plain[name]).max())


def test_chains_through_the_general_engine_equal_the_chain_engine() -> None:
    chain = S.Network((D(1.4, 0.1), A("relu"), D(1.2, 0.2), A("tanh"), D(1.0, 0.0), A("gelu"), D(1.0)))
    x, y = RNG.normal(size=(11, 5)), RNG.normal(size=(6, 5))
    for other in (None, y):
        expected = gram(chain, x, other)
        got = engine.network_gram(chain, x, other, True)
        np.testing.assert_allclose(got[0], expected["nngp"], rtol=1e-12)
        np.testing.assert_allclose(got[1], expected["ntk"], rtol=1e-12)


def test_numerical_activations_inside_conv_nets_are_finite_and_psd() -> None:
    net = S.Network((S.Conv((3, 3), None, "SAME", 1.5, 0.1), A("tanh"), S.Conv((3, 3), None, "VALID", 1.5, 0.1),
                     A("softplus"), S.GlobalAvgPool(), D(1.0)))
    x = RNG.normal(size=(5, 5, 5, 2))
    out = gram(net, x)
    for name in ("nngp", "ntk"):
        assert np.isfinite(out[name]).all()
        assert np.linalg.eigvalsh(out[name]).min() > -1e-10 * np.abs(out[name]).max()
    # the self blocks' numerical path and the pair path agree on the diagonal
    np.testing.assert_allclose(np.diag(engine.network_gram(net, x, x.copy(), True)[0]), np.diag(out["nngp"]),
                               rtol=1e-10)


@pytest.mark.parametrize(("layers", "shape", "fragment"), [
    ((S.Conv((3, 3)), A("relu"), S.Flatten(), D()), (5,), "layers[0]: conv needs inputs with spatial axes"),
    ((S.Conv((3, 3)), S.Flatten(), D()), (6, 3), "layers[0]: 2 window entries for 1 spatial axes"),
    ((S.Conv((7, 7)), S.Flatten(), D()), (6, 6, 2), "does not fit an input of 6"),
    ((D(), A("relu"), S.LayerNorm(), D()), (5,), "layers[2]: layer_norm needs Gaussian inputs"),
    ((A("relu"), D()), (5,), "layers[0]: an activation needs Gaussian inputs"),
    ((D(), A("relu"), S.Branches(((D(),), ())), D()), (5,), "layers[2]: a sum merge needs Gaussian"),
    ((D(), S.Branches(((D(), A("relu")), (D(),)), "product"), A("relu"), D()), (5,), "layers[2]: an activation"),
    ((S.Conv((3, 3)), A("relu"), S.Conv((3, 3))), (6, 6, 1), "ends with spatial axes"),
    ((S.Conv((3, 3)), S.Branches(((S.AvgPool((2, 2)),), ())), S.Flatten(), D()), (6, 6, 1), "branch 1 ends with"),
    ((D(width=3), S.Branches(((D(width=4),), (D(width=3),))), D()), (5,), "branch 1 ends with width 3"),
    ((D(), S.Branches(((), ()))), (5,), "layers[1]: branches [0, 1] carry the same randomness"),
    ((D(), S.Branches(((A("relu"),), (A("erf"),)), "product"), D()), (5,), "carry the same randomness"),
    ((S.Conv((3, 3)), S.Branches(((S.AvgPool((2, 2), (1, 1), "SAME"),), ())), S.Flatten(), D()), (6, 6, 1),
     "carry the same randomness"),
    ((D(), D(), D()), (5,), "layers[1]: standard parameterization needs"),
])
def test_networks_that_do_not_fit_name_the_layer(layers: tuple, shape: tuple, fragment: str) -> None:
    parameterization = "standard" if "standard" in fragment else "ntk"
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        trace(S.Network(layers, parameterization), shape)


def test_core_reproduces_the_neural_tangents_fixtures() -> None:
    """neural-tangents' values through the core alone (the API test covers the HTTP path)."""
    cases = json.loads((Path(__file__).parents[1] / "fixtures" / "neural_tangents" / "cases.json").read_text())
    checked = 0
    for case in cases:
        if "refused" in case or case["name"].startswith("nt_quirk_"):  # see the API test
            continue
        kernel = case["kernel"]
        spec = S.Network(tuple(layer_from_json(layer) for layer in kernel["layers"]),
                         kernel.get("parameterization", "ntk"))
        out = gram(spec, np.array(case["x1"]), np.array(case["x2"]))
        for name in ("nngp", "ntk"):
            expected = np.array(case[name])
            np.testing.assert_allclose(out[name], expected, rtol=1e-8, atol=1e-11 * np.abs(expected).max(),
                                       err_msg=case["name"])
        checked += 1
    assert checked >= 25
